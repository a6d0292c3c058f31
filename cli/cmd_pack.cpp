// zcwrap pack: TorchScript files -> blob + actor config.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "common.hpp"
#include "file_util.hpp"
#include "wrapper_access.hpp"
#include "zcwrap/zcwrap.hpp"

namespace zcwrap::cli {
namespace {

// "writing  512.0 MiB / 1.0 GiB  812.3 MiB/s" on stderr, redrawn in place at
// most ten times a second; only when stderr is a terminal.
class ProgressBar {
 public:
  void update(uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (first_done_ == kNone) {  // the rate counts from the first report, not from loading
      first_done_ = done;
      start_ = now;
    }
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0 ? static_cast<double>(done - first_done_) / seconds : 0;
    std::fprintf(stderr, "\rwriting  %s / %s  %s/s   ", human_bytes(done).c_str(), human_bytes(total).c_str(),
                 human_bytes(static_cast<uint64_t>(rate)).c_str());
    if (done >= total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  static constexpr uint64_t kNone = UINT64_MAX;
  uint64_t first_done_ = kNone;
  std::chrono::steady_clock::time_point start_{};
  std::chrono::steady_clock::time_point last_{};
};

struct PackArgs {
  std::string model_path;           // standalone MODEL.pt
  std::vector<std::string> models;  // NAME=PATH, a pipeline
  std::string output;
  std::string config;  // default: OUTPUT without .zcb, plus .actor.json
  std::string align = "4096";
  std::string name;  // standalone only; default "model"
  bool quiet = false;
  bool json = false;
};

std::string default_config_path(const std::string& output) {
  const std::string ext = ".zcb";
  std::string stem = output;
  if (stem.size() > ext.size() && stem.compare(stem.size() - ext.size(), ext.size(), ext) == 0) {
    stem.resize(stem.size() - ext.size());
  }
  return stem + ".actor.json";
}

int run_pack(const PackArgs& args) {
  const auto start = std::chrono::steady_clock::now();
  if (args.model_path.empty() == args.models.empty()) {
    throw Error(ErrorCode::kUsage, args.models.empty()
                                       ? "nothing to pack: give MODEL.pt or --model NAME=PATH"
                                       : "give either MODEL.pt or --model NAME=PATH options, not both");
  }
  PackOptions options;
  if (!parse_size(args.align, &options.alignment)) {
    throw Error(ErrorCode::kUsage, "--align " + args.align + ": not a size (e.g. 4096, 64K, 2M)");
  }
  if (!args.name.empty() && !args.models.empty()) {
    throw Error(ErrorCode::kUsage, "--name names a standalone model; pipeline models are named by --model NAME=PATH");
  }
  if (!args.name.empty()) options.standalone_name = args.name;

  std::vector<ModelFile> files;
  const bool standalone = args.models.empty();
  if (standalone) {
    files.push_back({options.standalone_name, args.model_path});
  } else {
    for (const std::string& spec : args.models) {
      std::optional<ModelFile> file = parse_name_path(spec);
      if (!file) throw Error(ErrorCode::kUsage, "--model " + spec + ": expected NAME=PATH");
      files.push_back(std::move(*file));
    }
  }
  const std::string config_path = args.config.empty() ? default_config_path(args.output) : args.config;
  struct stat st {};
  if (::stat(args.output.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    throw Error(ErrorCode::kUsage, args.output + ": is " + detail::file_type_name(st.st_mode) +
                                       "; a blob must be a regular file, which workers map");
  }
  std::vector<std::string> inputs;
  for (const ModelFile& file : files) inputs.push_back(file.path);
  check_outputs({args.output, config_path}, inputs);
  ProgressBar bar;
  if (!args.quiet && !args.json && ::isatty(STDERR_FILENO)) {
    options.progress = [&bar](uint64_t done, uint64_t total) { bar.update(done, total); };
  }
  const Layout layout = standalone ? Layout::kStandalone : Layout::kPipeline;
  const detail::Packed packed = detail::WrapperAccess::pack_files(files, layout, args.output, options);
  const ModelWrapper& wrapper = packed.wrapper;
  const BlobInfo& info = packed.summary;
  write_actor_config(wrapper, config_path);

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (args.json) {
    std::printf("%s\n", nlohmann::json{{"blob", args.output},
                                       {"config", config_path},
                                       {"models", wrapper.model_names()},
                                       {"file_size", info.file_size},
                                       {"storages", {{"count", info.storage_count}, {"bytes", info.storage_bytes}}},
                                       {"dedup_saved_bytes", info.dedup_saved_bytes},
                                       {"unshared_bytes", info.unshared_bytes},
                                       {"seconds", seconds}}
                            .dump(2)
                            .c_str());
  } else if (!args.quiet) {
    uint64_t tensors = 0;
    for (const ModelInfo& m : info.models) tensors += m.tensor_count;
    // A file may hold several models (an AOTInductor package of several).
    const size_t models = info.models.size();
    std::printf("packed %zu model%s (%llu tensors, %s in %llu storages) into %s (%s) in %.2f s\n", models,
                models == 1 ? "" : "s", static_cast<unsigned long long>(tensors),
                human_bytes(info.storage_bytes).c_str(), static_cast<unsigned long long>(info.storage_count),
                args.output.c_str(), human_bytes(info.file_size).c_str(), seconds);
    if (info.dedup_saved_bytes > 0) std::printf("  dedup saved %s\n", human_bytes(info.dedup_saved_bytes).c_str());
    if (info.unshared_bytes > 0) {
      std::printf("  warning: %s of tensor data stayed in skeletons (not shared); see zcwrap inspect\n",
                  human_bytes(info.unshared_bytes).c_str());
    }
    std::printf("  actor config: %s\n", config_path.c_str());
  }
  return 0;
}

}  // namespace

void setup_pack(CLI::App& app, int& status) {
  auto args = std::make_shared<PackArgs>();
  CLI::App* cmd = app.add_subcommand(
      "pack", "Pack a TorchScript model, or a pipeline of named models, into a blob and actor config");
  cmd->add_option("MODEL", args->model_path, "A TorchScript file (torch.jit.save) to pack on its own");
  cmd->add_option("--model", args->models,
                  "NAME=PATH: one model of a pipeline (repeat for each; names are [A-Za-z0-9_.-])")
      ->type_name("NAME=PATH");
  cmd->add_option("-o,--output", args->output, "The blob to write (written beside it, renamed into place)")
      ->required()
      ->type_name("OUT.zcb");
  cmd->add_option("--config", args->config, "Where to write the actor config [default: OUT.actor.json]")
      ->type_name("PATH");
  cmd->add_option("--align", args->align, "Alignment of each storage: power of two, 64 to 2M")
      ->capture_default_str();
  cmd->add_option("--name", args->name, "Name of a standalone model [default: model]");
  cmd->add_flag("-q,--quiet", args->quiet, "Print nothing on success");
  cmd->add_flag("--json", args->json, "Print a JSON summary");
  cmd->callback([args, &status] { status = run_pack(*args); });
}

}  // namespace zcwrap::cli
