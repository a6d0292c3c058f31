// Test helpers for driving the zcwrap binary: run it, and check a failure
// the way a user sees it. Header-only: it needs doctest's assertions.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "support.hpp"

namespace zcwrap::test {

// Runs $ZCWRAP_BIN with `args`.
inline ProcessResult run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), zcwrap_bin());
  return run_process(args);
}

// A failure as the user sees it: exit status, and exactly one stderr line
// "zcwrap: error: ..." that mentions `mention`, with no C++ backtrace.
inline void check_failure(const ProcessResult& r, int status, const std::string& mention) {
  CHECK(r.status == status);
  CHECK_MESSAGE(r.err.rfind("zcwrap: error: ", 0) == 0, r.err);
  CHECK_MESSAGE(r.err.find(mention) != std::string::npos, r.err);
  CHECK_MESSAGE(std::count(r.err.begin(), r.err.end(), '\n') == 1, r.err);
  CHECK(r.err.find("Exception raised from") == std::string::npos);  // no c10 backtrace
}

}  // namespace zcwrap::test
