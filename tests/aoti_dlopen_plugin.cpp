// Loaded RTLD_LOCAL by tests/aoti_dlopen_host.c: unwraps a blob with the
// public API and runs its standalone model, from a process where LibTorch is
// not in the global scope.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include <torch/script.h>

#include "zcwrap/zcwrap.hpp"

extern "C" __attribute__((visibility("default"))) int zcwrap_test_unwrap_run(const char* blob, const char* input,
                                                                             const char* output, char* message,
                                                                             unsigned long size) {
  try {
    std::ifstream in(input, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const c10::IValue args = torch::jit::pickle_load(bytes);
    std::vector<c10::IValue> inputs;
    if (args.isTuple()) {
      for (const c10::IValue& v : args.toTupleRef().elements()) inputs.push_back(v);
    } else {
      inputs.push_back(args);
    }
    zcwrap::Unwrapped u = zcwrap::ModelWrapper::open(blob).unwrap();
    torch::NoGradGuard no_grad;
    const c10::IValue out = u.model().run(inputs);
    const std::vector<char> saved = torch::jit::pickle_save(out);
    std::ofstream(output, std::ios::binary).write(saved.data(), static_cast<std::streamsize>(saved.size()));
    std::snprintf(message, size, "ok");
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(message, size, "failed: %s", e.what());
    return 1;
  }
}
