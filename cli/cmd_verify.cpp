// zcwrap verify: recompute every checksum of a blob, on all cores.
#include <cstdio>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "zcwrap/zcwrap.hpp"

namespace zcwrap::cli {
namespace {

struct VerifyArgs {
  std::string path;
  unsigned threads = 0;
  bool json = false;
};

int run_verify(const VerifyArgs& args) {
  // Opening checks the header, manifest and skeletons (the meta checksum);
  // verify() then hashes every storage.
  const nlohmann::json report = verify(args.path, args.threads);
  const auto& bad = report["bad"];
  if (args.json) std::printf("%s\n", report.dump(2).c_str());
  if (!bad.empty()) {
    const auto& first = bad[0];
    throw Error(ErrorCode::kBadBlob,
                report["blob"].get<std::string>() + ": storage " + std::to_string(first["storage"].get<size_t>()) +
                    " (" + first["tensor"].get<std::string>() + ") fails its checksum (stored " +
                    first["expected"].get<std::string>() + ", computed " + first["actual"].get<std::string>() +
                    "); " + std::to_string(bad.size()) + " of " + std::to_string(report["storages"].get<size_t>()) +
                    " storages are bad: re-pack the blob");
  }
  if (!args.json) {
    const double seconds = report["seconds"].get<double>();
    const double bytes = report["bytes"].get<double>();
    std::printf("ok: %s: %zu storages, %s, all checksums match (%.2f s, %.1f GiB/s)\n",
                report["blob"].get<std::string>().c_str(), report["storages"].get<size_t>(),
                human_bytes(report["bytes"]).c_str(), seconds,
                seconds > 0 ? bytes / seconds / (1024.0 * 1024 * 1024) : 0.0);
  }
  return 0;
}

}  // namespace

void setup_verify(CLI::App& app, int& status) {
  auto args = std::make_shared<VerifyArgs>();
  CLI::App* cmd = app.add_subcommand("verify", "Recompute every checksum of a blob; exit 0 only if all match");
  cmd->add_option("BLOB", args->path, "A blob, or the actor config naming one")->required()->type_name("BLOB|CONFIG");
  cmd->add_option("--threads", args->threads, "Hashing threads [default: all cores]");
  cmd->add_flag("--json", args->json, "Print the report as JSON (still exits 4 on a mismatch)");
  cmd->callback([args, &status] { status = run_verify(*args); });
}

}  // namespace zcwrap::cli
