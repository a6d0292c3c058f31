// zcwrap gc: remove the store's blobs that no process uses any more.
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

struct GcArgs {
  GcOptions options;
  bool json = false;
};

int run_gc(const GcArgs& args) {
  const std::vector<StoreFile> removed = gc(args.options);
  const char* verb = args.options.dry_run ? "would remove" : "removed";
  if (args.json) {
    nlohmann::json files = nlohmann::json::array();
    for (const StoreFile& f : removed) {
      files.push_back({{"path", f.path}, {"bytes", f.bytes}, {"temporary", f.temporary}});
    }
    const nlohmann::json out = {{"store", store_folder(args.options.store_dir)},
                                {"dry_run", args.options.dry_run},
                                {"removed", files}};
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  uint64_t bytes = 0;
  for (const StoreFile& f : removed) {
    std::printf("%s %s (%s%s)\n", verb, printable(f.path).c_str(), human_bytes(f.bytes).c_str(),
                f.temporary ? ", an unfinished pack's file" : "");
    bytes += f.bytes;
  }
  std::printf("%s: %s %zu file%s, %s\n", printable(store_folder(args.options.store_dir)).c_str(), verb,
              removed.size(), removed.size() == 1 ? "" : "s", human_bytes(bytes).c_str());
  return 0;
}

}  // namespace

void setup_gc(CLI::App& app, int& status) {
  auto args = std::make_shared<GcArgs>();
  CLI::App* cmd = app.add_subcommand(
      "gc", "Remove the store's blobs that no live process maps or holds, and unfinished packs' files");
  cmd->add_option("--store", args->options.store_dir, "The store folder [default: $ZCWRAP_STORE, else /dev/shm/zcwrap-UID]")
      ->type_name("DIR");
  cmd->add_flag("--dry-run", args->options.dry_run, "List what would be removed; remove nothing");
  cmd->add_flag("--json", args->json, "Print {store, dry_run, removed: [{path, bytes, temporary}]}");
  cmd->callback([args, &status] { status = run_gc(*args); });
}

}  // namespace zcwrap::cli
