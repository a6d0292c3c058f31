// libFuzzer target over the pickle scanner that `zcwrap inspect`, describe()
// and Python's weights_only use to tell what a pickle imports without
// running it (runtime/pickle_scan.cpp). Built by tests/fuzz/meson.build beside
// fuzz_blob and run by scripts/fuzz.sh; see tests/fuzz/README.md.
//
// A finding is a sanitizer report (the scanner must read only the bytes it is
// given), an exception leaving it (it reports what is wrong instead), or a
// global it lists whose module or name is not spelled in the input: it
// takes names as the pickle writes them, never makes one up.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string_view>

#include "pickle_scan.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view pickle(reinterpret_cast<const char*>(data), size);
  zcwrap::detail::PickleScan scan;
  try {
    scan = zcwrap::detail::scan_pickle(pickle);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_pickle: FINDING: scan_pickle threw: %s\n", e.what());
    std::abort();
  }
  for (const zcwrap::detail::PickleGlobal& g : scan.globals) {
    if (pickle.find(g.module) == std::string_view::npos || pickle.find(g.name) == std::string_view::npos) {
      std::fprintf(stderr, "fuzz_pickle: FINDING: listed %s, which the input does not spell\n", g.text().c_str());
      std::abort();
    }
  }
  return 0;
}
