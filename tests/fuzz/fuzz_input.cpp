// libFuzzer target over the check zcwrap run and bench apply to an input
// file's pickle before LibTorch's unpickler sees it, cli::check_input_pickle.
// Built by tests/fuzz/meson.build beside fuzz_blob and run by scripts/fuzz.sh;
// see tests/fuzz/README.md.
//
// A finding is a sanitizer report (the check must read only the bytes it is
// given, whatever they are), an exception leaving it (it returns what is
// wrong instead), or an accepted pickle that does not end in STOP.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include "input_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view pickle(reinterpret_cast<const char*>(data), size);
  std::string problem;
  try {
    problem = zcwrap::cli::check_input_pickle(pickle);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_input: FINDING: check_input_pickle threw: %s\n", e.what());
    std::abort();
  }
  if (problem.empty() && pickle.find('.') == std::string_view::npos) {
    std::fprintf(stderr, "fuzz_input: FINDING: accepted a pickle with no STOP opcode\n");
    std::abort();
  }
  return 0;
}
