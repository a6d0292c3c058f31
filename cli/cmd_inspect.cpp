// zcwrap inspect: what a blob holds, for people (a table) and scripts (--json).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "blob_file.hpp"
#include "describe.hpp"
#include "format.hpp"
#include "zcwrap/zcwrap.hpp"
#include "wrapper_access.hpp"

namespace zcwrap::cli {
namespace {

struct InspectArgs {
  std::string path;
  bool json = false;
  bool brief = false;
};

// "a, b, c" or "nothing", each made printable.
std::string list_text(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + printable(item);
  return out.empty() ? "nothing" : out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// `value` as nlohmann's dump(2) writes it nested `depth` levels deep: its
// continuation lines indented by 2 * depth more spaces.
std::string dump_at(const nlohmann::json& value, int depth) {
  std::string text = value.dump(2);
  for (size_t nl = text.find('\n'); nl != std::string::npos; nl = text.find('\n', nl + 1)) {
    text.insert(nl + 1, static_cast<size_t>(2 * depth), ' ');
  }
  return text;
}

// Prints to_json(describe(path)).dump(2), byte for byte, but writes each
// model's tensors one at a time from the manifest (tensor_info, as
// describe does): the JSON of a million tensors is never held at once.
void print_json(const ModelWrapper& wrapper, const std::string& path) {
  const std::shared_ptr<const detail::BlobFile> blob = detail::checked_blob(wrapper);
  const format::Manifest& m = blob->manifest();
  const nlohmann::json doc = detail::describe_blob(wrapper, path, {.tensors = false});
  auto print_tensors = [&](const format::ModelEntry& model) {
    if (model.tensors.empty()) {
      std::fputs("[]", stdout);
      return;
    }
    std::fputs("[", stdout);
    for (size_t i = 0; i < model.tensors.size(); ++i) {
      const nlohmann::json tensor = detail::tensor_info(model.tensors[i], m, blob->header());
      std::printf("%s\n        %s", i ? "," : "", dump_at(tensor, 4).c_str());
    }
    std::fputs("\n      ]", stdout);
  };
  std::fputs("{", stdout);
  const char* separator = "";
  for (const auto& [key, value] : doc.items()) {
    std::printf("%s\n  %s: ", separator, nlohmann::json(key).dump().c_str());
    separator = ",";
    if (key != "models") {
      std::fputs(dump_at(value, 1).c_str(), stdout);
      continue;
    }
    std::fputs("[", stdout);
    for (size_t i = 0; i < value.size(); ++i) {
      std::printf("%s\n    {", i ? "," : "");
      const char* field_separator = "";
      for (const auto& [field, content] : value[i].items()) {
        std::printf("%s\n      %s: ", field_separator, nlohmann::json(field).dump().c_str());
        field_separator = ",";
        if (field == "tensors") {
          print_tensors(m.models[i]);
        } else {
          std::fputs(dump_at(content, 3).c_str(), stdout);
        }
      }
      std::fputs("\n    }", stdout);
    }
    std::fputs("\n  ]", stdout);
  }
  std::fputs("\n}\n", stdout);
}

int run_inspect(const InspectArgs& args) {
  const ModelWrapper wrapper = ModelWrapper::open(args.path);
  if (args.json) {
    print_json(wrapper, args.path);
    return 0;
  }
  // The table too is printed a tensor at a time from the manifest.
  const std::shared_ptr<const detail::BlobFile> blob = detail::checked_blob(wrapper);
  const BlobInfo info = detail::describe_blob(wrapper, args.path, {.tensors = false});
  const SectionsInfo& h = info.header;
  std::printf("blob        %s\n", printable(info.blob).c_str());
  if (info.config) std::printf("config      %s\n", printable(*info.config).c_str());
  std::printf("format      v%d, made by %s\n", info.format_version, printable(info.producer).c_str());
  std::printf("size        %s (%llu bytes), checksum %s\n", human_bytes(info.file_size).c_str(),
              static_cast<unsigned long long>(info.file_size), format::hex64(h.meta_checksum).c_str());
  std::printf("sections    manifest %s at %llu, skeletons %s at %llu, data %s at %llu\n",
              human_bytes(h.manifest_length).c_str(), static_cast<unsigned long long>(h.manifest_offset),
              human_bytes(h.skeletons_length).c_str(), static_cast<unsigned long long>(h.skeletons_offset),
              human_bytes(h.data_length).c_str(), static_cast<unsigned long long>(h.data_offset));
  std::printf("alignment   %llu\n", static_cast<unsigned long long>(info.alignment));
  std::printf("storages    %llu, %s; dedup saved %s\n", static_cast<unsigned long long>(info.storage_count),
              human_bytes(info.storage_bytes).c_str(), human_bytes(info.dedup_saved_bytes).c_str());
  std::printf("kind        %s\n", info.standalone ? "standalone module" : "pipeline");
  if (info.pipeline_object) {
    const PipelineObjectInfo& p = *info.pipeline_object;
    std::printf("pipeline    object pickled, %s %s (%s raw); its pickle imports %s\n", printable(p.compression).c_str(),
                human_bytes(p.stored_bytes).c_str(), human_bytes(p.raw_bytes).c_str(), list_text(p.imports).c_str());
  }
  const format::Manifest& m = blob->manifest();
  for (size_t index = 0; index < info.models.size(); ++index) {
    const ModelInfo& model = info.models[index];
    std::printf("\nmodel '%s': %llu tensors, %s shared, %s left in the skeleton (%.1f%% shared); "
                "skeleton %s %s (%s raw)\n",
                printable(model.name).c_str(), static_cast<unsigned long long>(model.tensor_count),
                human_bytes(model.shared_bytes).c_str(), human_bytes(model.unshared_bytes).c_str(),
                100.0 * model.shared_fraction, printable(model.skeleton.kind).c_str(),
                human_bytes(model.skeleton.stored_bytes).c_str(), human_bytes(model.skeleton.raw_bytes).c_str());
    const format::SkeletonKind kind = format::skeleton_kind(model.skeleton.kind);
    if (kind != format::SkeletonKind::kUnknown && format::skeleton_kind_info(kind).rebuilt_in_python) {
      const format::SkeletonKindInfo& info = format::skeleton_kind_info(kind);
      std::printf("  %s packed from Python: unwrap it with the zcwrap Python package (zcwrap run and unpack "
                  "cannot%s%s)\n", std::string(info.description).c_str(),
                  info.python_file.empty() ? "" : "; ModelWrapper.unpack writes ",
                  std::string(info.python_file).c_str());
    }
    if (kind == format::SkeletonKind::kPythonPickle) {
      std::printf("  its pickle imports (unpickling may call them): %s\n", list_text(model.imports).c_str());
    }
    if (model.compiled) {
      const CompiledInfo& c = *model.compiled;
      std::printf("  compiled by AOTInductor for %s%s: its .so %s (weights' range included), %llu GPU kernel file%s; "
                  "runs on that device only\n",
                  printable(c.device).c_str(),
                  c.compute_capability.empty() ? "" : (" (compute capability " + printable(c.compute_capability) + ")").c_str(),
                  human_bytes(c.library_bytes).c_str(), static_cast<unsigned long long>(c.kernel_files),
                  c.kernel_files == 1 ? "" : "s");
    }
    if (args.brief) continue;
    std::printf("  %-40s %-9s %-10s %-18s %10s %12s %s\n", "TENSOR", "KIND", "DTYPE", "SHAPE", "BYTES",
                "OFFSET", "STORAGE");
    for (const format::TensorEntry& entry : m.models[index].tensors) {
      const TensorInfo t = detail::tensor_info(entry, m, blob->header());
      std::printf("  %-40s %-9s %-10s %-18s %10llu %12llu %llu\n", printable(t.path).c_str(), t.kind.c_str(),
                  printable(t.dtype).c_str(), shape_text(t.shape).c_str(), static_cast<unsigned long long>(t.bytes),
                  static_cast<unsigned long long>(t.offset), static_cast<unsigned long long>(t.storage));
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
