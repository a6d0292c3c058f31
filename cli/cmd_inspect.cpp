// zcwrap inspect: what a blob holds, for people (a table) and scripts (--json).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "describe.hpp"
#include "zcwrap/zcwrap.hpp"

namespace zcwrap::cli {
namespace {

struct InspectArgs {
  std::string path;
  bool json = false;
  bool brief = false;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

int run_inspect(const InspectArgs& args) {
  if (args.json) {
    std::printf("%s\n", describe(args.path).dump(2).c_str());
    return 0;
  }
  // The table is printed a tensor at a time from the manifest, so a large
  // one costs no JSON of every tensor (describe() builds that).
  const ModelWrapper wrapper = ModelWrapper::open(args.path);
  const std::shared_ptr<const detail::BlobFile> blob = detail::checked_blob(wrapper);
  const nlohmann::json info = detail::describe_blob(wrapper, args.path, /*with_tensors=*/false);
  const auto& h = info["header"];
  std::printf("blob        %s\n", printable(info["blob"].get<std::string>()).c_str());
  if (!info["config"].is_null()) std::printf("config      %s\n", printable(info["config"].get<std::string>()).c_str());
  std::printf("format      v%d, made by %s\n", info["format_version"].get<int>(),
              printable(info["producer"].get<std::string>()).c_str());
  std::printf("size        %s (%llu bytes), checksum %s\n", human_bytes(info["file_size"]).c_str(),
              static_cast<unsigned long long>(info["file_size"].get<uint64_t>()),
              h["meta_checksum"].get<std::string>().c_str());
  std::printf("sections    manifest %s at %llu, skeletons %s at %llu, data %s at %llu\n",
              human_bytes(h["manifest_length"]).c_str(),
              static_cast<unsigned long long>(h["manifest_offset"].get<uint64_t>()),
              human_bytes(h["skeletons_length"]).c_str(),
              static_cast<unsigned long long>(h["skeletons_offset"].get<uint64_t>()),
              human_bytes(h["data_length"]).c_str(),
              static_cast<unsigned long long>(h["data_offset"].get<uint64_t>()));
  std::printf("alignment   %llu\n", static_cast<unsigned long long>(info["alignment"].get<uint64_t>()));
  std::printf("storages    %zu, %s; dedup saved %s\n", info["storages"]["count"].get<size_t>(),
              human_bytes(info["storages"]["bytes"]).c_str(), human_bytes(info["dedup_saved_bytes"]).c_str());
  std::printf("kind        %s\n", info["standalone"].get<bool>() ? "standalone module" : "pipeline");
  for (size_t index = 0; index < info["models"].size(); ++index) {
    const nlohmann::json& model = info["models"][index];
    std::printf("\nmodel '%s': %zu tensors, %s shared, %s left in the skeleton (%.1f%% shared); "
                "skeleton %s %s (%s raw)\n",
                printable(model["name"].get<std::string>()).c_str(), model["tensor_count"].get<size_t>(),
                human_bytes(model["shared_bytes"]).c_str(), human_bytes(model["unshared_bytes"]).c_str(),
                100.0 * model["shared_fraction"].get<double>(),
                printable(model["skeleton"]["kind"].get<std::string>()).c_str(),
                human_bytes(model["skeleton"]["stored_bytes"]).c_str(),
                human_bytes(model["skeleton"]["raw_bytes"]).c_str());
    if (model["skeleton"]["kind"] == "python_pickle") {
      std::printf("  an eager PyTorch module packed from Python: unwrap it with the zcwrap Python package "
                  "(zcwrap run and unpack cannot)\n");
    }
    if (args.brief) continue;
    std::printf("  %-40s %-9s %-10s %-18s %10s %12s %s\n", "TENSOR", "KIND", "DTYPE", "SHAPE", "BYTES",
                "OFFSET", "STORAGE");
    const format::Manifest& m = blob->manifest();
    for (const format::TensorEntry& t : m.models[index].tensors) {
      const detail::TensorPlace place = detail::tensor_place(t, m, blob->header());
      std::printf("  %-40s %-9s %-10s %-18s %10llu %12llu %llu\n", printable(t.path).c_str(),
                  format::tensor_kind_name(t.kind), printable(t.dtype).c_str(), shape_text(t.sizes).c_str(),
                  static_cast<unsigned long long>(place.bytes), static_cast<unsigned long long>(place.offset),
                  static_cast<unsigned long long>(t.storage));
    }
  }
  return 0;
}

}  // namespace

void setup_inspect(CLI::App& app, int& status) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* cmd = app.add_subcommand("inspect", "Show a blob's header, models and every tensor");
  cmd->add_option("BLOB", args->path, "A blob, or the actor config naming one")->required()->type_name("BLOB|CONFIG");
  cmd->add_flag("--json", args->json, "Print the description as JSON (documented in docs/FORMAT.md)");
  cmd->add_flag("--brief", args->brief, "Models only, no tensor table");
  cmd->callback([args, &status] { status = run_inspect(*args); });
}

}  // namespace zcwrap::cli
