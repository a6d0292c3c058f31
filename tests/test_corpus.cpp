// The fuzz seed corpus (tests/fuzz/corpus, real packed blobs) in the normal
// build: every blob parses and is intact, and a short seeded mutation run,
// a small deterministic cousin of tests/fuzz/fuzz_blob.cpp, finds every
// mutant either accepted with in-bounds ranges or refused with kBadBlob.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "blob_file.hpp"
#include "fuzz/blob_checks.hpp"
#include "support.hpp"
#include "zcwrap/error.hpp"
#include "format.hpp"

using zcwrap::Error;
using zcwrap::ErrorCode;
namespace detail = zcwrap::detail;
namespace format = zcwrap::format;
namespace test = zcwrap::test;

namespace {

struct Seed {
  std::string name;
  std::vector<uint8_t> bytes;
  uint64_t meta_end = 0;  // end of the skeletons section: what the parser reads
};

std::string corpus_dir() {
  const char* dir = std::getenv("ZCWRAP_CORPUS");
  if (dir == nullptr || *dir == '\0') {
    throw std::runtime_error("ZCWRAP_CORPUS is not set; run the tests with 'meson test'");
  }
  return dir;
}

const std::vector<Seed>& corpus() {
  static const std::vector<Seed> seeds = [] {
    std::vector<std::string> names = test::list_dir(corpus_dir());
    std::sort(names.begin(), names.end());  // readdir order is not stable
    std::vector<Seed> out;
    for (const std::string& name : names) {
      const std::string bytes = test::read_bytes(corpus_dir() + "/" + name);
      Seed seed{name, std::vector<uint8_t>(bytes.begin(), bytes.end())};
      const detail::ParsedBlob layout = detail::parse_blob(seed.bytes.data(), seed.bytes.size(), name);
      seed.meta_end = layout.header.skeletons_offset + layout.header.skeletons_length;
      out.push_back(std::move(seed));
    }
    return out;
  }();
  return seeds;
}

enum class Mutation { kBitFlip, kByteZero, kByteFf, kByteRandom, kManifestDigit, kTruncate, kSplice, kCount };

const std::string kMutationNames[] = {"BIT_FLIP", "BYTE_ZERO", "BYTE_FF", "BYTE_RANDOM",
                                      "MANIFEST_DIGIT", "TRUNCATE", "SPLICE"};

// A mutant of `seeds[pick]`. Positions fall inside the bytes the parser reads
// (header, manifest, skeletons) seven times in eight: the data section is
// not parsed, so mutating it only tests that it is ignored.
std::vector<uint8_t> mutate(const std::vector<Seed>& seeds, size_t pick, Mutation kind, std::mt19937& rng) {
  const Seed& seed = seeds[pick];
  std::vector<uint8_t> b = seed.bytes;
  auto position = [&](uint64_t end) { return std::uniform_int_distribution<uint64_t>(0, end - 1)(rng); };
  auto somewhere = [&] { return position(rng() % 8 == 0 ? b.size() : seed.meta_end); };
  switch (kind) {
    case Mutation::kBitFlip:
      b[somewhere()] ^= static_cast<uint8_t>(1u << (rng() % 8));
      break;
    case Mutation::kByteZero:
      b[somewhere()] = 0;
      break;
    case Mutation::kByteFf:
      b[somewhere()] = 0xff;
      break;
    case Mutation::kByteRandom:
      b[somewhere()] = static_cast<uint8_t>(rng());
      break;
    case Mutation::kManifestDigit: {
      // The offsets, lengths, sizes and strides the range checks guard.
      const detail::ParsedBlob layout = detail::parse_blob(b.data(), b.size(), seed.name);
      const uint64_t start = layout.header.manifest_offset;
      const uint64_t end = start + layout.header.manifest_length;
      for (int tries = 0; tries < 64; ++tries) {
        const uint64_t at = start + position(end - start);
        if (b[at] >= '0' && b[at] <= '9') {
          b[at] = static_cast<uint8_t>('0' + rng() % 10);
          break;
        }
      }
      break;
    }
    case Mutation::kTruncate:
      b.resize(rng() % 2 ? position(seed.meta_end + 1) : position(b.size()));
      break;
    case Mutation::kSplice: {
      // Half overwrite a run of bytes with another blob's bytes from the same
      // offset (the size stays, so the header's file_size still holds); half
      // join this blob's head to another's tail.
      const Seed& other = seeds[rng() % seeds.size()];
      if (rng() % 2) {
        const uint64_t end = std::min<uint64_t>(b.size(), other.bytes.size());
        const uint64_t at = position(std::min<uint64_t>(end, seed.meta_end));
        const uint64_t n = std::min<uint64_t>(end - at, 1 + rng() % 256);
        std::copy_n(other.bytes.begin() + at, n, b.begin() + at);
      } else {
        const size_t cut = position(b.size() + 1);
        const size_t from = position(other.bytes.size() + 1);
        b.resize(cut);
        b.insert(b.end(), other.bytes.begin() + from, other.bytes.end());
      }
      break;
    }
    case Mutation::kCount:
      break;
  }
  return b;
}

enum class Verdict { kParsed, kRefused, kRefusedByManifest };

// Parses `b`; returns the verdict, or fills `wrong` with what broke the
// contract (an error other than kBadBlob, another exception, or a parsed
// blob with a range outside the bytes).
Verdict judge(const std::vector<uint8_t>& b, std::string* wrong) {
  detail::ParsedBlob layout;
  try {
    layout = detail::parse_blob(b.data(), b.size(), "mutant");
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kBadBlob) {
      *wrong = "error code " + std::to_string(static_cast<int>(e.code())) + ": " + e.what();
    }
    return std::strstr(e.what(), "mutant: manifest") || std::strstr(e.what(), "mutant: storages[") ||
                   std::strstr(e.what(), "mutant: models[")
               ? Verdict::kRefusedByManifest
               : Verdict::kRefused;
  } catch (const std::exception& e) {
    *wrong = std::string("exception other than zcwrap::Error: ") + e.what();
    return Verdict::kRefused;
  } catch (...) {
    *wrong = "a non-std exception";
    return Verdict::kRefused;
  }
  *wrong = test::check_reader_ranges(b.data(), b.size(), layout);
  return Verdict::kParsed;
}

}  // namespace

TEST_CASE("every corpus blob parses, reads back and is intact") {
  const std::vector<Seed>& seeds = corpus();
  REQUIRE(seeds.size() >= 5);
  bool pipeline = false, align64 = false, page_storage = false;
  for (const Seed& seed : seeds) {
    CAPTURE(seed.name);
    CHECK(seed.bytes.size() < 128 * 1024);  // a seed corpus stays small
    const detail::ParsedBlob layout = detail::parse_blob(seed.bytes.data(), seed.bytes.size(), seed.name);
    CHECK(test::check_reader_ranges(seed.bytes.data(), seed.bytes.size(), layout) == "");
    auto blob = detail::BlobFile::open(corpus_dir() + "/" + seed.name);
    CHECK(blob->bad_storages(1).empty());
    for (size_t i = 0; i < blob->manifest().models.size(); ++i) {
      CHECK(blob->skeleton(i).size() == blob->manifest().models[i].skeleton.raw_length);
    }
    pipeline |= layout.manifest.models.size() > 1;
    align64 |= layout.header.alignment == 64;
    for (const format::StorageEntry& s : layout.manifest.storages) {
      page_storage |= s.nbytes >= layout.header.alignment;
    }
  }
  // What tests/fuzz/README.md says the corpus covers.
  CHECK(pipeline);
  CHECK(align64);
  CHECK(page_storage);
}

TEST_CASE("the reader checks catch layouts the parser must refuse") {
  const Seed& seed = corpus().at(0);
  const detail::ParsedBlob good = detail::parse_blob(seed.bytes.data(), seed.bytes.size(), seed.name);
  REQUIRE(good.manifest.storages.size() >= 2);
  REQUIRE(!good.manifest.models.at(0).tensors.empty());
  struct Case {
    const char* name;
    void (*edit)(detail::ParsedBlob&);
    const char* expected;
  };
  const Case cases[] = {
      {"DATA_SECTION_PAST_END", [](detail::ParsedBlob& l) { l.header.data_length += 1; }, "data section"},
      {"STORAGE_PAST_DATA", [](detail::ParsedBlob& l) { l.manifest.storages.back().nbytes = UINT64_MAX; },
       "outside the data section"},
      {"STORAGE_OVERLAP", [](detail::ParsedBlob& l) { l.manifest.storages[1].offset = 0; }, "overlaps"},
      {"TENSOR_PAST_STORAGE",
       [](detail::ParsedBlob& l) { l.manifest.models[0].tensors[0].storage_offset = UINT64_MAX / 16; },
       "reaches past its storage"},
      {"SKELETON_PAST_SECTION",
       [](detail::ParsedBlob& l) { l.manifest.models[0].skeleton.offset = l.header.skeletons_length; },
       "skeleton outside its section"},
  };
  CHECK(test::check_reader_ranges(seed.bytes.data(), seed.bytes.size(), good) == "");
  for (const Case& c : cases) {
    CAPTURE(c.name);
    detail::ParsedBlob bad = good;
    c.edit(bad);
    const std::string wrong = test::check_reader_ranges(seed.bytes.data(), seed.bytes.size(), bad);
    CHECK_MESSAGE(wrong.find(c.expected) != std::string::npos, wrong);
  }
}

TEST_CASE("mutated corpus blobs are parsed with in-bounds ranges or refused with kBadBlob") {
  const std::vector<Seed>& seeds = corpus();
  REQUIRE(!seeds.empty());
  constexpr int kMutants = 20000;
  constexpr int kKinds = static_cast<int>(Mutation::kCount);
  std::mt19937 rng(20240611);
  int counts[kKinds][3] = {};
  int broken = 0;
  for (int i = 0; i < kMutants; ++i) {
    const Mutation kind = static_cast<Mutation>(i % kKinds);
    const size_t pick = rng() % seeds.size();
    std::vector<uint8_t> mutant = mutate(seeds, pick, kind, rng);
    // As is, then with the meta checksum fixed so the manifest checks see it.
    std::vector<uint8_t> fixed;
    const bool refixed = test::fix_meta_checksum(mutant.data(), mutant.size(), &fixed);
    for (const std::vector<uint8_t>* b : {&mutant, refixed ? &fixed : nullptr}) {
      if (b == nullptr) continue;
      std::string wrong;
      const Verdict verdict = judge(*b, &wrong);
      counts[static_cast<int>(kind)][static_cast<int>(verdict)] += 1;
      if (!wrong.empty() && ++broken <= 10) {
        FAIL_CHECK("mutant " << i << " (" << kMutationNames[static_cast<int>(kind)] << " of "
                             << seeds[pick].name << (b == &fixed ? ", checksum fixed" : "")
                             << "): " << wrong);
      }
    }
  }
  CHECK(broken == 0);
  int parsed = 0, by_manifest = 0;
  for (int k = 0; k < kKinds; ++k) {
    MESSAGE(kMutationNames[k] << " (as is and checksum-fixed): " << counts[k][0] << " accepted, "
                              << counts[k][1] + counts[k][2] << " refused (" << counts[k][2]
                              << " by the manifest checks)");
    parsed += counts[k][0];
    by_manifest += counts[k][2];
  }
  // The run reaches past the header and checksum, and not everything is refused.
  CHECK(by_manifest > kMutants / 20);
  CHECK(parsed > kMutants / 20);
}
