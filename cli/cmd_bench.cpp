// zcwrap bench: start N workers that unwrap a blob (and, with --baseline,
// N that torch::jit::load the original), then report load latency and what
// each worker holds in memory, read from /proc while all are alive.
//
// This file reads the command line and checks it; bench_run.cpp starts and
// measures the workers (this binary run again as the hidden `bench-worker`,
// bench_worker.cpp, which holds all the LibTorch code); bench_output.cpp
// prints the results. All three are torch-free.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench.hpp"
#include "bench_output.hpp"
#include "bench_run.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "describe.hpp"
#include "file_util.hpp"
#include "input_check.hpp"
#include "proc_memory.hpp"
#include "zcwrap/zcwrap.hpp"

namespace zcwrap::cli {
namespace {

// The baseline's files, one for every model of the blob in pack order (the
// zcwrap workers map them all, so the baseline loads them all too).
std::vector<ModelFile> baseline_loads(const BenchArgs& args, const ModelWrapper& wrapper) {
  const std::vector<std::string> names = wrapper.model_names();
  if (wrapper.is_standalone_module()) {
    if (args.baseline.size() != 1) throw Error(ErrorCode::kUsage, "--baseline: give one ORIGINAL.pt for a standalone model");
    return {{names.front(), args.baseline.front()}};
  }
  std::vector<ModelFile> loads;
  for (const std::string& name : names) {
    std::string path;
    for (const std::string& spec : args.baseline) {
      const std::optional<ModelFile> file = parse_name_path(spec);
      if (!file) {
        throw Error(ErrorCode::kUsage, "--baseline " + spec + ": a pipeline needs NAME=PATH for each model (" +
                                           join(names) + ")");
      }
      if (file->name == name) path = file->path;
    }
    if (path.empty()) throw Error(ErrorCode::kUsage, "--baseline: no NAME=PATH for model '" + name + "' (models: " +
                                                         join(names) + ")");
    loads.push_back({name, path});
  }
  if (args.baseline.size() != names.size()) {
    throw Error(ErrorCode::kUsage, "--baseline: give NAME=PATH once for each model (" + join(names) + ")");
  }
  return loads;
}

void require_readable(const std::string& path) {
  if (::access(path.c_str(), R_OK) != 0) {
    throw Error(ErrorCode::kInput, path + ": cannot read: " + detail::errno_text(errno));
  }
}

int run_bench(const BenchArgs& args) {
  const ModelWrapper wrapper = ModelWrapper::open(args.path);
  // Describes the mapping `wrapper` already holds.
  const BlobInfo info = detail::describe_blob(wrapper, args.path, {.tensors = false});
  if (!args.worker.input.empty()) check_input_file(args.worker.input);
  if (args.worker.calls > 1 && args.worker.input.empty()) throw Error(ErrorCode::kUsage, "--calls needs --input");
  const std::vector<std::string> names = wrapper.model_names();
  if (!args.worker.model.empty() && std::find(names.begin(), names.end(), args.worker.model) == names.end()) {
    throw Error(ErrorCode::kUsage, args.path + ": no model '" + args.worker.model + "' (models: " + join(names) + ")");
  }
  // open() names the blob by its absolute path: workers may run anywhere.
  WorkerSpec zc_spec = args.worker;
  zc_spec.actor = wrapper.to_actor();
  WorkerSpec base_spec = args.worker;  // --prefetch and --fast-load are zcwrap's
  base_spec.prefetch = Prefetch::kNone;
  base_spec.fast_load = false;
  std::vector<std::string> base_files;
  if (!args.baseline.empty()) {
    base_spec.loads = baseline_loads(args, wrapper);
    for (const ModelFile& file : base_spec.loads) {
      require_readable(file.path);
      base_files.push_back(file.path);
    }
  }

  const GroupOptions options{args.workers, args.cold, args.concurrent, args.timeout_s};
  std::vector<std::string> warnings;
  const FileId blob = file_id(wrapper.blob_path());
  const Group zc = run_group("zcwrap", {wrapper.blob_path()}, zc_spec, options, &blob, &warnings);
  std::optional<Group> base;
  if (!args.baseline.empty()) base = run_group("torch::jit::load", base_files, base_spec, options, nullptr, &warnings);
  for (const WorkerResult& w : zc.workers) {
    for (const std::string& text : w.report.warnings) {
      if (std::find(warnings.begin(), warnings.end(), text) == warnings.end()) warnings.push_back(text);
    }
  }
  const BenchResult result{args,           info, names, base_files, zc, base ? &*base : nullptr,
                           output_mismatch(zc, base ? &*base : nullptr), warnings};
  if (args.json) {
    std::printf("%s\n", bench_json(result).dump(2).c_str());
  } else {
    print_bench_table(result);
  }
  std::fflush(stdout);
  for (const std::string& w : warnings) std::fprintf(stderr, "zcwrap: warning: %s\n", w.c_str());
  if (!result.mismatch.empty()) throw Error(ErrorCode::kInternal, result.mismatch);
  return 0;
}

}  // namespace

void setup_bench(CLI::App& app, int& status) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Measure N workers unwrapping a blob: load latency, RSS and PSS, optionally against torch::jit::load");
  cmd->footer(
      "Workers are this zcwrap run again. Each loads, runs --calls calls of --input, reads every weight page, and\n"
      "stays alive until the memory of all of them is read from /proc/PID/smaps_rollup. The JSON form is\n"
      "documented in docs/BENCHMARKS.md (\"bench --json\").");
  cmd->add_option("BLOB", args->path, "A blob, or the actor config naming one")->required()->type_name("BLOB|CONFIG");
  cmd->add_option("-n,--workers", args->workers, "Worker processes per group (1 to 256)")
      ->check(CLI::Range(1, 256).description(""))
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--baseline", args->baseline,
                  "Also run N workers that torch::jit::load the original file; for a pipeline NAME=PATH once per "
                  "model")
      ->type_name("ORIGINAL.pt");
  cmd->add_option("-i,--input", args->worker.input, "torch.save of a tensor or tuple: each worker calls the model on it")
      ->type_name("IN.pt");
  cmd->add_option("--model", args->worker.model, "Call only this model of a pipeline [default: each in order, fed the "
                                          "previous one's output]")
      ->type_name("NAME");
  cmd->add_option("--device", args->worker.device, "Device to unwrap onto (cpu, cuda:N); memory figures are host memory")
      ->type_name("DEV")
      ->capture_default_str();
  add_prefetch_option(cmd, &args->worker.prefetch);
  cmd->add_flag("--fast-load", args->worker.fast_load,
                "zcwrap workers on cuda:N: one device buffer streamed through pinned memory (needs -Dcuda)");
  cmd->add_option("--threads", args->worker.threads, "LibTorch intra-op threads per worker")
      ->check(CLI::Range(1, 1024).description(""))
      ->type_name("N")
      ->capture_default_str();
  cmd->add_option("--calls", args->worker.calls, "Calls of --input per worker; the first is timed apart")
      ->check(CLI::Range(1, 1000000).description(""))
      ->type_name("K")
      ->capture_default_str();
  cmd->add_flag("--cold", args->cold,
                "Drop the model files from the page cache before each group (POSIX_FADV_DONTNEED; not on tmpfs)");
  cmd->add_flag("--concurrent", args->concurrent,
                "Start a group's workers all at once [default: one after another, so latencies are not contention]");
  cmd->add_flag("--warm-up", args->worker.warm_up,
                "Load a tiny TorchScript module before the timed load, so LibTorch's one-time set-up (paid by\n"
                "a process's first load of anything) is left out of both groups' figures");
  cmd->add_option("--timeout", args->timeout_s, "Seconds to wait for a group's reports")
      ->check(CLI::Range(1, 86400).description(""))
      ->type_name("S")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "Print the results as JSON");
  cmd->callback([args, &status] { status = run_bench(*args); });
  setup_bench_worker(app, status);
}

}  // namespace zcwrap::cli
