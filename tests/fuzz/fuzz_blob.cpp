// libFuzzer target over the blob container parser, detail::parse_blob.
// Built by tests/fuzz/meson.build (-Dfuzz=enabled, clang only) and run by
// scripts/fuzz.sh; see tests/fuzz/README.md.
//
// A finding is any exception other than zcwrap::Error(kBadBlob) leaving the
// parser, a sanitizer report, or a blob the parser accepts whose ranges a
// reader would then follow outside the bytes (check_reader_ranges).
// libFuzzer hands each input over in a heap buffer of exactly `size` bytes,
// so AddressSanitizer also catches any read past the end.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "blob_checks.hpp"
#include "blob_file.hpp"
#include "zcwrap/error.hpp"

namespace {

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_blob: FINDING: %s\n", what.c_str());
  std::abort();
}

void parse_and_read(const uint8_t* bytes, size_t size) {
  zcwrap::detail::ParsedBlob parsed;
  try {
    parsed = zcwrap::detail::parse_blob(bytes, size, "fuzz-input");
  } catch (const zcwrap::Error& e) {
    if (e.code() != zcwrap::ErrorCode::kBadBlob) {
      finding("parse_blob threw code " + std::to_string(static_cast<int>(e.code())) +
              ", not kBadBlob: " + e.what());
    }
    return;
  }
  const std::string wrong = zcwrap::test::check_reader_ranges(bytes, size, parsed);
  if (!wrong.empty()) finding("parse_blob accepted a blob where " + wrong);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  parse_and_read(data, size);
  // The same bytes with a correct meta checksum, so that the manifest checks
  // see mutated manifests too. A vector holds exactly `size` bytes, as
  // libFuzzer's own buffer does.
  std::vector<uint8_t> fixed;
  if (zcwrap::test::fix_meta_checksum(data, size, &fixed)) parse_and_read(fixed.data(), fixed.size());
  return 0;
}
