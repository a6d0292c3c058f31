// zcwrap-sample worker: rebuilds the model from the actor config the driver
// sent, serves batches, and prints one JSON line. The only file of the
// sample that includes LibTorch.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>
#include <torch/script.h>

#include "output_digest.hpp"
#include "sample.hpp"
#include "zcwrap/zcwrap.hpp"

namespace sample {
namespace {

using Clock = std::chrono::steady_clock;

struct WorkerArgs {
  std::string actor;  // the actor config, as JSON text
  std::string input;
  std::string model;  // serve only this model of a pipeline
  int batches = 20;
  int threads = 1;
};

int parse_count(const std::string& option, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < 1 || value > 1000000) {
    throw std::runtime_error(option + " " + text + ": not a count");
  }
  return static_cast<int>(value);
}

WorkerArgs parse_args(int argc, char** argv) {
  WorkerArgs args;
  for (int i = 0; i + 1 < argc; i += 2) {
    const std::string option = argv[i];
    const std::string value = argv[i + 1];
    if (option == "--actor") args.actor = value;
    else if (option == "--input") args.input = value;
    else if (option == "--model") args.model = value;
    else if (option == "--batches") args.batches = parse_count(option, value);
    else if (option == "--threads") args.threads = parse_count(option, value);
    else throw std::runtime_error("unknown worker option " + option);
  }
  if (argc % 2 != 0 || args.actor.empty() || args.input.empty()) {
    throw std::runtime_error("worker needs --actor JSON and --input IN.pt (it is started by the driver)");
  }
  return args;
}

// LibTorch's messages carry a C++ backtrace and, from the interpreter, a
// TorchScript traceback; the driver's one-line error needs the last line,
// which says what failed.
std::string torch_message(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  const size_t nl = text.rfind('\n');
  return nl == std::string::npos ? text : text.substr(nl + 1);
}

std::vector<c10::IValue> read_inputs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  try {
    // torch::jit::pickle_load, not torch::pickle_load: in LibTorch 1.13 the
    // latter is declared in <torch/serialize.h>, which <torch/script.h> does
    // not include.
    return as_arguments(torch::jit::pickle_load(bytes));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not a tensor file written by torch.save (" + torch_message(e) + ")");
  }
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

nlohmann::json serve(const WorkerArgs& args) {
  // N workers each with a pool as wide as the machine would oversubscribe it.
  at::set_num_threads(args.threads);
  const std::vector<c10::IValue> inputs = read_inputs(args.input);

  // The actor pattern: the config is all a worker needs. load() maps the
  // blob and rebuilds the modules; their weights point into the mapping,
  // shared with every other worker on the machine.
  const auto start = Clock::now();
  zcwrap::Unwrapped modules = zcwrap::ActorWrapper::from_actor(nlohmann::json::parse(args.actor)).load();
  const double load_ms = ms_since(start);

  // A pipeline runs its models in order, each fed the previous one's
  // output; run() runs a model whatever its kind.
  std::vector<zcwrap::Unwrapped::Model> chain;
  for (const std::string& name : args.model.empty() ? modules.names() : std::vector<std::string>{args.model}) {
    chain.push_back(modules.model(name));
  }

  torch::NoGradGuard no_grad;
  std::vector<double> batch_ms;
  std::string checksum;
  c10::IValue result;
  for (int batch = 0; batch < args.batches; ++batch) {
    const auto batch_start = Clock::now();
    std::vector<c10::IValue> arguments = inputs;
    try {
      for (zcwrap::Unwrapped::Model& model : chain) {
        result = model.run(arguments);
        arguments = as_arguments(result);
      }
    } catch (const std::exception& e) {  // the interpreter's errors are not all c10::Error
      throw std::runtime_error(args.input + ": the model failed on this input: " + torch_message(e));
    }
    batch_ms.push_back(ms_since(batch_start));
    OutputDigest digest;
    digest.add(result);
    if (batch == 0) checksum = digest.hex();
    if (digest.hex() != checksum) throw std::runtime_error("different outputs for the same batch");
  }
  std::sort(batch_ms.begin(), batch_ms.end());
  return {{"ok", true},
          {"load_ms", load_ms},
          {"batch_ms", batch_ms[batch_ms.size() / 2]},
          {"output", describe_output(result)},
          {"checksum", checksum}};
}

}  // namespace

int run_worker(int argc, char** argv) {
  nlohmann::json report;
  int status = 0;
  try {
    report = serve(parse_args(argc, argv));
  } catch (const zcwrap::Error& e) {
    report = {{"ok", false}, {"error", e.what()}};
    status = 1;
  } catch (const std::exception& e) {
    report = {{"ok", false}, {"error", torch_message(e)}};
    status = 1;
  }
  std::printf("%s\n", report.dump().c_str());
  return status;
}

}  // namespace sample
