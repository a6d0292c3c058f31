// One fresh process of benchmarks/aoti_bench.py: loads a model one way,
// runs it once, prints one JSON line, and with --hold waits until its stdin
// closes (so the driver can read its memory).
//
// Usage: aoti_bench_worker MODE FILE INPUT [--hold]
//   zcwrap        FILE is a blob (AOTInductor or TorchScript): ModelWrapper::open(FILE).unwrap()
//   loader        FILE is a .pt2: torch::inductor::AOTIModelPackageLoader (extracts it to a temporary
//                 folder, copies every weight)
//   jit           FILE is a .pt: torch::jit::load
//   none          loads nothing: LibTorch's own cost per process
// Times are from the start of main (LibTorch already mapped by the dynamic
// loader, as in any worker that links it) to the model being ready, and to
// its first result.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include "zcwrap/zcwrap.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::vector<at::Tensor> load_inputs(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const c10::IValue v = torch::jit::pickle_load(bytes);
  if (v.isTensor()) return {v.toTensor()};
  std::vector<at::Tensor> out;
  for (const c10::IValue& e : v.toTupleRef().elements()) out.push_back(e.toTensor());
  return out;
}

double checksum(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor().sum().item<double>();
  double total = 0;
  if (v.isTuple()) for (const c10::IValue& e : v.toTupleRef().elements()) total += checksum(e);
  if (v.isList()) for (const c10::IValue& e : v.toListRef()) total += checksum(e);
  return total;
}

}  // namespace

int main(int argc, char** argv) {
  const Clock::time_point t0 = Clock::now();
  if (argc < 4) {
    std::fprintf(stderr, "usage: aoti_bench_worker zcwrap|loader|jit|none FILE INPUT [--hold]\n");
    return 2;
  }
  const std::string mode = argv[1], file = argv[2];
  const bool hold = argc > 4 && std::string(argv[4]) == "--hold";
  try {
    torch::NoGradGuard no_grad;
    const std::vector<at::Tensor> inputs = load_inputs(argv[3]);
    const std::vector<c10::IValue> args(inputs.begin(), inputs.end());
    const Clock::time_point start = Clock::now();  // after reading the input, which every mode does
    double ready = 0, first = 0, sum = 0;
    // Kept alive until the end, so --hold measures a loaded model.
    std::optional<zcwrap::Unwrapped> unwrapped;
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    torch::jit::Module module;
    if (mode == "zcwrap") {
      unwrapped = zcwrap::ModelWrapper::open(file).unwrap();
      ready = ms_since(start);
      sum = checksum(unwrapped->model().run(args));
    } else if (mode == "loader") {
      loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(file);
      ready = ms_since(start);
      const std::vector<at::Tensor> out = loader->run(inputs);
      for (const at::Tensor& t : out) sum += t.sum().item<double>();
    } else if (mode == "jit") {
      module = torch::jit::load(file);
      module.eval();
      ready = ms_since(start);
      sum = checksum(module.forward(args));
    } else if (mode != "none") {
      throw std::runtime_error("unknown mode " + mode);
    }
    first = ms_since(start);
    const nlohmann::json line = {{"mode", mode}, {"ready_ms", ready}, {"first_ms", first},
                                 {"main_ms", ms_since(t0)}, {"checksum", sum}};
    std::printf("%s\n", line.dump().c_str());
    std::fflush(stdout);
    if (hold) {
      char c;
      while (::read(0, &c, 1) > 0) {
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::string what = e.what();
    if (const size_t nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    std::printf("%s\n", nlohmann::json({{"mode", mode}, {"error", what}}).dump().c_str());
    return 1;
  }
}
