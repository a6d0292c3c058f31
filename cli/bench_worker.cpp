// zcwrap bench-worker (hidden): one worker of `zcwrap bench`. The protocol
// is described in bench.hpp.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "bench.hpp"
#include "common.hpp"
#include "placement.hpp"
#include "torch_io.hpp"
#include "worker_process.hpp"
#include "zcwrap/zcwrap.hpp"
#include "messages.hpp"
#include "output_digest.hpp"  // samples/: the sample worker reports its outputs the same way

namespace zcwrap::cli {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Reads one byte of every page in [data, data + size); volatile keeps the
// reads.
void touch_pages(const void* data, size_t size) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const volatile unsigned char* bytes = static_cast<const unsigned char*>(data);
  for (size_t offset = 0; offset < size; offset += page) static_cast<void>(bytes[offset]);
}

struct WeightBytes {
  uint64_t total = 0;       // the distinct storages behind the modules' tensors
  uint64_t in_mapping = 0;  // of which inside the blob's mapping
};

// A call need not read every weight (an embedding reads only the rows of
// its tokens), so the worker reads one byte of every page of every storage:
// the memory figures then compare whole models. Frozen modules loaded with
// torch::jit::load keep weights as graph constants, not attributes; those
// are neither counted nor touched here, only by the call.
WeightBytes touch_weights(const std::vector<torch::jit::Module>& modules, const std::vector<at::Tensor>& bound,
                          const Unwrapped* unwrapped, bool touch) {
  const auto* map_begin = static_cast<const unsigned char*>(unwrapped ? unwrapped->mapping_data() : nullptr);
  const size_t map_size = unwrapped ? unwrapped->mapping_size() : 0;
  std::set<const void*> seen;  // tied weights share a storage: count it once
  WeightBytes bytes;
  std::vector<at::Tensor> tensors = bound;
  for (const torch::jit::Module& module : modules) {
    for (const auto& attribute : module.named_attributes(/*recurse=*/true)) {
      if (attribute.value.isTensor()) tensors.push_back(attribute.value.toTensor());
    }
  }
  {
    for (const at::Tensor& tensor : tensors) {
      const c10::Storage& storage = tensor.storage();
      const auto* data = static_cast<const unsigned char*>(storage.data_ptr().get());
      if (data == nullptr || !seen.insert(data).second) continue;
      const size_t size = storage.nbytes();
      bytes.total += size;
      const bool inside = map_begin != nullptr && data >= map_begin && size <= map_size &&
                          static_cast<size_t>(data - map_begin) <= map_size - size;
      if (inside) bytes.in_mapping += size;
      if (touch && storage.device().is_cpu()) touch_pages(data, size);
    }
  }
  return bytes;
}

// The first torch::jit::load in a process pays for LibTorch's one-time
// set-up (about 15-20 ms with 1.13 on a 2-core x86 VM), whatever it loads:
// loading a tiny module first takes it out of the timed load, for both kinds
// of worker alike.
void warm_up() {
  torch::jit::Module tiny("zcwrap_bench_warm_up");
  tiny.register_buffer("w", torch::ones({4}));
  tiny.define("def forward(self, x):\n    return x * self.w\n");
  std::stringstream archive;
  tiny.save(archive);
  torch::jit::load(archive);
}

// Loads, calls, touches, reports, then waits for the driver while the
// modules stay alive and resident.
void serve(const WorkerSpec& args) {
  // N workers each with a pool as wide as the machine would oversubscribe
  // the cores and make every latency a measure of contention.
  at::set_num_threads(args.threads);
  const c10::Device device = detail::parse_device(args.device);
  std::vector<c10::IValue> inputs;
  if (!args.input.empty()) inputs = read_inputs(args.input, device);
  if (args.warm_up) warm_up();

  std::optional<Unwrapped> unwrapped;
  // Called in order, each fed the last one's output: the unwrapped models
  // (any kind, through run()), or the baseline's modules.
  std::vector<std::function<c10::IValue(std::vector<c10::IValue>)>> chain;
  std::vector<torch::jit::Module> modules;  // the baseline's, whose attributes are its weights
  std::vector<at::Tensor> bound;            // the unwrapped models' tensors
  WorkerReport report;
  if (!args.actor.is_null()) {
    UnwrapOptions options;
    options.device = args.device;
    options.prefetch = args.prefetch;
    options.use_fast_load = args.fast_load;
    const auto start = Clock::now();
    unwrapped = ModelWrapper::from_actor(args.actor).unwrap(options);
    report.load_ms = ms_since(start);
    report.warnings = unwrapped->warnings();
    std::vector<Unwrapped::Model> models = unwrapped->models();
    if (!args.model.empty()) models = {unwrapped->model(args.model)};
    for (Unwrapped::Model& model : models) {
      chain.push_back([model](std::vector<c10::IValue> in) mutable { return model.run(std::move(in)); });
      if (model.is_torchscript()) {
        modules.push_back(model.module());
      } else {
        bound.insert(bound.end(), model.tensors().begin(), model.tensors().end());
      }
    }
  } else {
    const auto start = Clock::now();
    for (const ModelFile& file : args.loads) {
      try {
        modules.push_back(torch::jit::load(file.path, device));
      } catch (const std::exception& e) {
        throw Error(ErrorCode::kBadModel, file.path + ": torch::jit::load failed: " + torch_message(e));
      }
      modules.back().eval();  // as unwrap hands modules back
    }
    report.load_ms = ms_since(start);
    if (!args.model.empty()) {
      for (size_t i = 0; i < args.loads.size(); ++i) {
        if (args.loads[i].name == args.model) modules = {modules[i]};
      }
    }
    for (torch::jit::Module& module : modules) {
      chain.push_back([module](std::vector<c10::IValue> in) mutable { return module.forward(std::move(in)); });
    }
  }

  if (!args.input.empty()) {
    torch::NoGradGuard no_grad;
    std::vector<double> call_ms;
    c10::IValue result;
    for (int call = 0; call < args.calls; ++call) {
      std::vector<c10::IValue> arguments = inputs;
      const auto start = Clock::now();
      try {
        for (auto& model : chain) {
          result = model(arguments);
          arguments = as_arguments(result);
        }
      } catch (const std::exception& e) {  // the interpreter's errors are not all c10::Error
        throw Error(ErrorCode::kBadModel, args.input + ": the model failed on this input: " + torch_message(e));
      }
      call_ms.push_back(ms_since(start));
    }
    sample::OutputDigest digest;
    digest.add(result);
    report.first_call_ms = call_ms.front();
    if (call_ms.size() > 1) report.call_ms = median(std::vector<double>(call_ms.begin() + 1, call_ms.end()));
    report.output = sample::describe_output(result);
    report.output_digest = digest.hex();
  }
  const bool on_cpu = device.is_cpu();
  const WeightBytes weights = touch_weights(modules, bound, unwrapped ? &*unwrapped : nullptr, on_cpu);
  // The whole mapping too: weights of graph constants (frozen modules) are
  // in it as well, but not among the attributes.
  if (unwrapped && on_cpu) touch_pages(unwrapped->mapping_data(), unwrapped->mapping_size());
  report.weight_bytes = weights.total;
  report.weight_bytes_in_mapping = weights.in_mapping;
  if (!send_report(report)) throw Error(ErrorCode::kInternal, "the bench driver is gone");
  wait_for_driver();
}

int run_bench_worker(const std::string& spec_text) {
  nlohmann::json failure;
  try {
    WorkerSpec spec;
    try {
      spec = nlohmann::json::parse(spec_text).get<WorkerSpec>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorCode::kUsage, std::string("bench-worker: not a worker spec (it is started by zcwrap bench): ") +
                                         e.what());
    }
    if (spec.actor.is_null() == spec.loads.empty()) {
      throw Error(ErrorCode::kUsage, "bench-worker: the spec needs either an actor or loads");
    }
    serve(spec);
    return 0;
  } catch (const Error& e) {
    failure = {{"ok", false}, {"code", static_cast<int>(e.code())}, {"error", e.what()}};
  } catch (const std::exception& e) {
    failure = {{"ok", false}, {"code", static_cast<int>(ErrorCode::kInternal)}, {"error", torch_message(e)}};
  }
  if (!send_report(failure)) std::fprintf(stderr, "zcwrap: error: %s\n", failure["error"].get<std::string>().c_str());
  return 1;
}

}  // namespace

void setup_bench_worker(CLI::App& app, int& status) {
  auto spec = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(kBenchWorkerCommand, "One worker of zcwrap bench (started by it)");
  cmd->group("");  // hidden from --help
  cmd->add_option("SPEC", *spec, "The worker spec, as JSON (bench.hpp)")->required();
  cmd->callback([spec, &status] { status = run_bench_worker(*spec); });
}

}  // namespace zcwrap::cli
