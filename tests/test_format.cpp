// The container format on its own (no LibTorch): header codec, and a table of
// handcrafted bad blobs that BlobFile::open must refuse with a specific error.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>

#include <zstd.h>

#include "blob_file.hpp"
#include "file_util.hpp"
#include "support.hpp"
#include "zcwrap/error.hpp"
#include "format.hpp"

using nlohmann::json;
using zcwrap::Error;
using zcwrap::ErrorCode;
namespace format = zcwrap::format;
namespace test = zcwrap::test;

namespace {

// The parts a blob is made of, before layout.
struct Parts {
  json manifest;
  std::string skeletons;
  std::string data;
  uint64_t alignment = 4096;
  // Applied to the laid-out header before the checksum is computed, so the
  // header check itself (not the checksum) must catch the change.
  std::function<void(format::Header&)> edit_header;
};

// Data that differs at every position, so an offset mistake cannot pass.
std::string patterned(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// A small valid blob: one model, two storages (4 KiB of float32 at 0, 8 bytes
// at 4096), three tensors, one of them a strided view.
Parts valid_parts() {
  Parts p;
  p.skeletons = "skeleton bytes";
  p.data = patterned(4096 + 8, 1);
  p.manifest = {
      {"format", "zcwrap"},
      {"version", 1},
      {"producer", "test"},
      {"alignment", 4096},
      {"standalone", true},
      {"storages",
       {{{"offset", 0}, {"nbytes", 4096}, {"xxh3", "0000000000000000"}},
        {{"offset", 4096}, {"nbytes", 8}, {"xxh3", "0000000000000000"}}}},
      {"models",
       {{{"name", "model"},
         {"skeleton",
          {{"kind", "torchscript"},
           {"compression", "none"},
           {"offset", 0},
           {"length", 14},
           {"raw_length", 14},
           {"unshared_bytes", 0}}},
         {"tensors",
          {{{"path", "fc.weight"}, {"kind", "parameter"}, {"dtype", "float32"}, {"sizes", {32, 32}},
            {"strides", {32, 1}}, {"storage", 0}, {"storage_offset", 0}},
           {{"path", "fc.weight_t"}, {"kind", "buffer"}, {"dtype", "float32"}, {"sizes", {32, 31}},
            {"strides", {1, 32}}, {"storage", 0}, {"storage_offset", 1}},
           {{"path", "step"}, {"kind", "attribute"}, {"dtype", "int64"}, {"sizes", json::array()},
            {"strides", json::array()}, {"storage", 1}, {"storage_offset", 0}}}}}}}};
  return p;
}

std::string build(const Parts& p) {
  const std::string manifest = p.manifest.dump();
  format::Header h;
  h.alignment = p.alignment;
  h.manifest_offset = h.header_length;
  h.manifest_length = manifest.size();
  h.skeletons_offset = h.manifest_offset + manifest.size();
  h.skeletons_length = p.skeletons.size();
  format::align_up(h.skeletons_offset + h.skeletons_length, std::max<uint64_t>(p.alignment, 4096),
                   &h.data_offset);
  h.data_length = p.data.size();
  h.file_size = h.data_offset + h.data_length;
  if (p.edit_header) p.edit_header(h);
  std::vector<uint8_t> header = format::encode_header(h);
  std::string blob(reinterpret_cast<const char*>(header.data()), header.size());
  blob += manifest + p.skeletons;
  blob.resize(std::max<size_t>(blob.size(), h.data_offset), '\0');
  blob.resize(h.data_offset);
  blob += p.data;
  blob.resize(std::max<size_t>(blob.size(), h.file_size), '\0');
  auto inside = [&](uint64_t offset, uint64_t length) {
    return length <= blob.size() && offset <= blob.size() - length;
  };
  // Checksum what can be checksummed; a header edited out of range is
  // refused before its checksum is looked at.
  if (inside(h.manifest_offset, h.manifest_length) && inside(h.skeletons_offset, h.skeletons_length) &&
      h.header_length >= 96 && h.header_length <= blob.size()) {
    h.meta_checksum = format::meta_checksum(reinterpret_cast<const uint8_t*>(blob.data()), h);
    header = format::encode_header(h);
    std::copy(header.begin(), header.begin() + 88, blob.begin());
  }
  return blob;
}

// Opens `bytes` as a blob file; returns "" when it opens, else the error.
std::string open_error(const std::string& bytes, ErrorCode* code = nullptr) {
  test::TempDir dir;
  const std::string path = dir / "case.zcb";
  test::write_bytes(path, bytes);
  try {
    zcwrap::detail::BlobFile::open(path);
    return "";
  } catch (const Error& e) {
    if (code != nullptr) *code = e.code();
    const std::string what = e.what();
    CHECK_MESSAGE(what.rfind(path + ": ", 0) == 0, "the error must name the file: " << what);
    CHECK_MESSAGE(what.find('\n') == std::string::npos, "one line: " << what);
    return what;
  }
}

struct Case {
  const char* name;
  std::function<void(Parts&)> edit;
  const char* expected;  // a part of the error message
};

}  // namespace

TEST_CASE("header encodes and decodes field for field") {
  format::Header h;
  h.file_size = 0x0102030405060708ull;
  h.alignment = 65536;
  h.manifest_offset = 96;
  h.manifest_length = 11;
  h.skeletons_offset = 107;
  h.skeletons_length = 13;
  h.data_offset = 65536;
  h.data_length = h.file_size - 65536;
  h.meta_checksum = 0xfeedfacecafebeefull;
  std::vector<uint8_t> bytes = format::encode_header(h);
  REQUIRE(bytes.size() == 96);
  CHECK(std::string(bytes.begin(), bytes.begin() + 8) == "ZCWRAP01");
  CHECK(bytes[16] == 0x08);  // little-endian file_size
  CHECK(bytes[23] == 0x01);
  format::Header back = format::decode_header(bytes.data(), bytes.size(), h.file_size, "h");
  CHECK(back.file_size == h.file_size);
  CHECK(back.alignment == h.alignment);
  CHECK(back.skeletons_length == 13);
  CHECK(back.data_offset == 65536);
  CHECK(back.meta_checksum == h.meta_checksum);
}

namespace {

// A row of the header table in docs/FORMAT.md's "1. Layout".
struct LayoutRow {
  size_t offset = 0;
  size_t size = 0;
  std::string field;
  std::string line;
};

// The table's rows, found as man/make_format_page.py finds the table: in the
// fenced block after "## 1. Layout", from the "off  size  field" line to the
// next numbered item ("2. Manifest").
std::vector<LayoutRow> layout_rows() {
  const char* root = std::getenv("ZCWRAP_SOURCE_ROOT");
  if (root == nullptr || *root == '\0') {
    throw std::runtime_error("ZCWRAP_SOURCE_ROOT is not set; run the tests with 'meson test'");
  }
  std::istringstream md(test::read_bytes(std::string(root) + "/docs/FORMAT.md"));
  static const std::regex table_head(R"(\s*off\s+size\s+field\s*)");
  static const std::regex next_item(R"(\s*\d+\.\s.*)");
  static const std::regex row(R"(\s*(\d+)\s+(\d+)\s+(\w+).*)");
  bool in_section = false, in_block = false, in_table = false;
  std::vector<LayoutRow> rows;
  std::string line;
  while (std::getline(md, line)) {
    if (!in_section) {
      in_section = line == "## 1. Layout";
    } else if (line.starts_with("```")) {
      if (in_block) break;
      in_block = true;
    } else if (in_block && !in_table) {
      in_table = std::regex_match(line, table_head);
    } else if (in_table) {
      if (std::regex_match(line, next_item)) break;
      std::smatch m;
      if (std::regex_match(line, m, row)) rows.push_back({std::stoul(m[1]), std::stoul(m[2]), m[3], line});
    }
  }
  return rows;
}

// Bytes as hex ("08 07 06"), so a failed comparison shows them.
std::string hex(const uint8_t* bytes, size_t n) {
  std::string out;
  static const char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out += ' ';
    out += kDigits[bytes[i] >> 4];
    out += kDigits[bytes[i] & 15];
  }
  return out;
}

// A member of format::Header, named as in C++, which is the name the table
// gives the field.
struct HeaderMember {
  std::string name;
  size_t size = 0;
  std::function<void(format::Header&, uint64_t)> set;
};
#define HEADER_MEMBER(m) \
  HeaderMember{#m, sizeof(format::Header::m), \
               [](format::Header& h, uint64_t v) { h.m = static_cast<decltype(h.m)>(v); }}

const std::vector<HeaderMember>& header_members() {
  static const std::vector<HeaderMember> members = {
      HEADER_MEMBER(header_length),    HEADER_MEMBER(flags),           HEADER_MEMBER(file_size),
      HEADER_MEMBER(alignment),        HEADER_MEMBER(manifest_offset), HEADER_MEMBER(manifest_length),
      HEADER_MEMBER(skeletons_offset), HEADER_MEMBER(skeletons_length), HEADER_MEMBER(data_offset),
      HEADER_MEMBER(data_length),      HEADER_MEMBER(meta_checksum),
  };
  return members;
}
#undef HEADER_MEMBER

// Every member's value, in declaration order. The structured binding stops
// compiling when Header gains or loses a member, so this cannot fall behind.
std::vector<uint64_t> member_values(const format::Header& h) {
  const auto& [m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10] = h;
  return {m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10};
}

}  // namespace

TEST_CASE("docs/FORMAT.md's header table is what encode_header writes, field for field") {
  const std::vector<LayoutRow> rows = layout_rows();
  REQUIRE_MESSAGE(!rows.empty(), "no header table under '## 1. Layout' in docs/FORMAT.md");

  // Member i gets bytes 0x11 * (i + 1) + k, k = 0, 1, ...: no two bytes of
  // the header alike (but header_length's, see below), none a default value.
  format::Header h;
  std::map<std::string, uint64_t> values;
  for (size_t i = 0; i < header_members().size(); ++i) {
    const HeaderMember& member = header_members()[i];
    uint64_t value = 0;
    for (size_t k = 0; k < member.size; ++k) value |= uint64_t(0x11 * (i + 1) + k) << (8 * k);
    // encode_header pads to header_length: keep it below 64 KiB.
    if (member.name == "header_length") value &= 0xffff;
    member.set(h, value);
    values[member.name] = value;
  }
  // The list above sets every member of Header: none keeps its default.
  std::vector<uint64_t> set_values, got_values = member_values(h);
  for (const auto& [name, value] : values) set_values.push_back(value);
  std::sort(set_values.begin(), set_values.end());
  std::sort(got_values.begin(), got_values.end());
  REQUIRE_MESSAGE(set_values == got_values, "a member of format::Header is missing from header_members()");

  const std::vector<uint8_t> bytes = format::encode_header(h);
  REQUIRE(bytes.size() >= format::kHeaderLengthV1);
  size_t end = 0;
  std::map<std::string, int> listed;
  for (const LayoutRow& row : rows) {
    CAPTURE(row.line);
    ++listed[row.field];
    // The rows cover the fixed header without gaps or overlaps.
    CHECK(row.offset == end);
    end = row.offset + row.size;
    REQUIRE(end <= format::kHeaderLengthV1);
    const std::string at = hex(bytes.data() + row.offset, row.size);
    if (row.field == "magic") {
      CHECK(row.size == sizeof(format::kMagic));
      CHECK(at == hex(reinterpret_cast<const uint8_t*>(format::kMagic), sizeof(format::kMagic)));
      CHECK(row.line.find('"' + std::string(format::kMagic, sizeof(format::kMagic)) + '"') != std::string::npos);
    } else if (row.field == "reserved") {
      const std::vector<uint8_t> zeros(row.size, 0);
      CHECK(at == hex(zeros.data(), zeros.size()));
    } else {
      const auto member = std::find_if(header_members().begin(), header_members().end(),
                                       [&](const HeaderMember& m) { return m.name == row.field; });
      REQUIRE_MESSAGE(member != header_members().end(), "docs/FORMAT.md lists '" << row.field
                                                            << "', which format::Header does not have");
      CHECK(row.size == member->size);
      std::vector<uint8_t> little_endian;
      for (size_t k = 0; k < row.size; ++k) little_endian.push_back(uint8_t(values[row.field] >> (8 * k)));
      CHECK(at == hex(little_endian.data(), row.size));
      if (row.field == "meta_checksum") CHECK(row.offset == format::kChecksumFieldOffset);
    }
  }
  CHECK(end == format::kHeaderLengthV1);
  for (const HeaderMember& member : header_members()) {
    CHECK_MESSAGE(listed[member.name] == 1, "docs/FORMAT.md's header table lists format::Header::" << member.name
                                                << " " << listed[member.name] << " times, not once");
  }
  CHECK(listed["magic"] == 1);
  CHECK(listed["reserved"] == 1);
}

TEST_CASE("helpers: alignment, dtypes, model names") {
  uint64_t out = 0;
  CHECK(format::align_up(4097, 4096, &out));
  CHECK(out == 8192);
  CHECK_FALSE(format::align_up(UINT64_MAX - 10, 4096, &out));
  CHECK(format::storage_alignment(100, 4096) == 64);
  CHECK(format::storage_alignment(4096, 4096) == 4096);
  CHECK(format::dtype_size("bfloat16") == 2);
  CHECK(format::dtype_size("complex128") == 16);
  CHECK(format::dtype_size("float8") == 0);
  CHECK(format::valid_model_name("encoder_v2.1-a"));
  CHECK_FALSE(format::valid_model_name(""));
  CHECK_FALSE(format::valid_model_name("a/b"));
  CHECK_FALSE(format::valid_model_name("a b"));
}

TEST_CASE("a valid handcrafted blob opens and its manifest reads back") {
  const Parts p = valid_parts();
  test::TempDir dir;
  test::write_bytes(dir / "ok.zcb", build(p));
  auto blob = zcwrap::detail::BlobFile::open(dir / "ok.zcb");
  const format::Manifest& m = blob->manifest();
  REQUIRE(m.models.size() == 1);
  CHECK(m.models[0].tensors.size() == 3);
  CHECK(m.models[0].tensors[1].strides == std::vector<int64_t>{1, 32});
  CHECK(blob->header().data_offset % 4096 == 0);
  CHECK(std::memcmp(blob->storage_data(1), p.data.data() + 4096, 8) == 0);
  CHECK(blob->skeleton(0) == "skeleton bytes");
  CHECK(blob->find_model("model") == 0);
  CHECK(blob->find_model("other") == -1);
}

TEST_CASE("bad blobs are refused with a specific error") {
  auto models = [](Parts& p) -> json& { return p.manifest["models"]; };
  auto tensor = [](Parts& p, int i) -> json& { return p.manifest["models"][0]["tensors"][i]; };
  const std::vector<Case> cases = {
      {"HEADER_BAD_MAGIC", nullptr, "not a zcwrap blob"},
      {"HEADER_FUTURE_VERSION", nullptr, "version '02' is not supported"},
      {"HEADER_TRUNCATED", nullptr, "truncated header"},
      {"FILE_TRUNCATED", nullptr, "(truncated)"},
      {"FILE_EXTRA_BYTES", nullptr, "(extra bytes)"},
      {"EMPTY_FILE", nullptr, "not a zcwrap blob"},
      {"HEADER_BAD_ALIGN", [](Parts& p) { p.edit_header = [](format::Header& h) { h.alignment = 3000; }; },
       "alignment 3000 is not a power of two"},
      {"HEADER_ALIGN_TOO_BIG",
       [](Parts& p) { p.edit_header = [](format::Header& h) { h.alignment = 4u << 20; }; },
       "is not a power of two between"},
      {"HEADER_FLAGS", [](Parts& p) { p.edit_header = [](format::Header& h) { h.flags = 4; }; },
       "unknown flags"},
      {"HEADER_LENGTH_SHORT", [](Parts& p) { p.edit_header = [](format::Header& h) { h.header_length = 40; }; },
       "header_length 40"},
      {"MANIFEST_PAST_END",
       [](Parts& p) { p.edit_header = [](format::Header& h) { h.manifest_length = h.file_size; }; },
       "manifest section"},
      {"MANIFEST_LENGTH_OVERFLOW",
       [](Parts& p) { p.edit_header = [](format::Header& h) { h.manifest_length = UINT64_MAX - 50; }; },
       "manifest section"},
      {"DATA_NOT_PAGE_ALIGNED",
       [](Parts& p) {
         p.edit_header = [](format::Header& h) {
           h.data_offset -= 64;
           h.data_length += 64;
         };
       },
       "not page- and storage-aligned"},
      {"MANIFEST_NOT_JSON", [](Parts& p) { p.manifest = json("not an object"); }, "manifest: expected a JSON object"},
      {"MANIFEST_WRONG_VERSION", [](Parts& p) { p.manifest["version"] = 7; }, "manifest.version 7"},
      {"MANIFEST_MISSING_FIELD", [](Parts& p) { p.manifest.erase("storages"); }, "missing field 'storages'"},
      {"MANIFEST_ALIGN_DIFFERS", [](Parts& p) { p.manifest["alignment"] = 64; }, "differs from the header"},
      {"NO_MODELS", [&](Parts& p) { models(p) = json::array(); }, "at least one model"},
      {"DUPLICATE_MODEL",
       [&](Parts& p) {
         p.manifest["standalone"] = false;
         models(p).push_back(models(p)[0]);
       },
       "duplicate model name"},
      {"BAD_MODEL_NAME", [&](Parts& p) { models(p)[0]["name"] = "../x"; }, "invalid model name"},
      {"STORAGE_PAST_END", [](Parts& p) { p.manifest["storages"][1]["nbytes"] = 4096; }, "lies outside the data section"},
      {"STORAGE_OFFSET_OVERFLOW",
       [](Parts& p) { p.manifest["storages"][1]["offset"] = UINT64_MAX - 4095; },
       "lies outside the data section"},
      {"STORAGES_OVERLAP",
       [](Parts& p) {
         p.manifest["storages"][1]["offset"] = 0;
         p.manifest["storages"][1]["nbytes"] = 8;
       },
       "overlaps the previous storage"},
      {"STORAGE_MISALIGNED", [](Parts& p) { p.manifest["storages"][1]["offset"] = 4100; }, "is not a multiple of 64"},
      {"STORAGE_BAD_CHECKSUM_TEXT", [](Parts& p) { p.manifest["storages"][0]["xxh3"] = "xyz"; }, "hex digits"},
      {"TENSOR_UNKNOWN_DTYPE", [&](Parts& p) { tensor(p, 0)["dtype"] = "float8"; }, "unknown dtype 'float8'"},
      {"TENSOR_GRAD_ON_INT", [&](Parts& p) { tensor(p, 2)["requires_grad"] = true; },
       "(step): requires_grad on a int64 tensor"},
      {"TENSOR_UNKNOWN_KIND", [&](Parts& p) { tensor(p, 0)["kind"] = "weights"; }, "unknown tensor kind"},
      {"TENSOR_PAST_STORAGE", [&](Parts& p) { tensor(p, 0)["sizes"] = {32, 33}; }, "which holds 4096 bytes"},
      {"TENSOR_VIEW_PAST_STORAGE", [&](Parts& p) { tensor(p, 1)["storage_offset"] = 100; },
       "which holds 4096 bytes"},
      {"TENSOR_BAD_STORAGE_INDEX", [&](Parts& p) { tensor(p, 0)["storage"] = 2; }, "storage 2 does not exist"},
      {"TENSOR_NEGATIVE_SIZE", [&](Parts& p) { tensor(p, 0)["sizes"] = {-1, 32}; }, "expected non-negative integers"},
      {"TENSOR_SIZE_OVERFLOW",
       [&](Parts& p) {
         tensor(p, 0)["sizes"] = {1ull << 40, 1ull << 40};
         tensor(p, 0)["strides"] = {0, 0};
       },
       "element count overflows"},
      {"TENSOR_STRIDE_OVERFLOW",
       [&](Parts& p) { tensor(p, 0)["strides"] = {uint64_t(INT64_MAX), 1}; },
       "extent overflows"},
      {"TENSOR_TOO_MANY_DIMS",
       [&](Parts& p) {
         tensor(p, 0)["sizes"] = std::vector<int>(65, 1);
         tensor(p, 0)["strides"] = std::vector<int>(65, 1);
       },
       "more than the limit of 64"},
      {"TENSOR_RANK_MISMATCH", [&](Parts& p) { tensor(p, 0)["strides"] = {1}; }, "2 sizes but 1 strides"},
      {"SKELETON_PAST_END", [&](Parts& p) { models(p)[0]["skeleton"]["length"] = 1000; },
       "lies outside the skeletons section"},
      {"QUANT_MISSING_PARAMS", [&](Parts& p) { tensor(p, 0)["dtype"] = "qint8"; }, "needs a quantization object"},
      {"QUANT_ON_FLOAT",
       [&](Parts& p) { tensor(p, 0)["quantization"] = {{"scheme", "per_tensor_affine"}, {"scale", 0.1}, {"zero_point", 0}}; },
       "quantization given for dtype float32"},
      {"QUANT_UNKNOWN_SCHEME",
       [&](Parts& p) {
         tensor(p, 0)["dtype"] = "qint8";
         tensor(p, 0)["quantization"] = {{"scheme", "per_tensor_symmetric"}};
       },
       "unknown quantization scheme"},
      {"QUANT_CHANNEL_COUNT",
       [&](Parts& p) {
         tensor(p, 0)["dtype"] = "quint8";
         tensor(p, 0)["quantization"] = {
             {"scheme", "per_channel_affine"}, {"axis", 0}, {"scales", {0.1, 0.2}}, {"zero_points", {0, 1}}};
       },
       "2 scales and 2 zero points for 32 channels"},
      {"QUANT_ZERO_POINT_RANGE",
       [&](Parts& p) {
         tensor(p, 0)["dtype"] = "qint8";
         tensor(p, 0)["quantization"] = {{"scheme", "per_tensor_affine"}, {"scale", 0.1}, {"zero_point", 1ll << 40}};
       },
       "zero_point: 1099511627776 is outside qint8's range [-128, 127]"},
      {"QUANT_CHANNEL_ZERO_POINT_RANGE",
       [&](Parts& p) {
         tensor(p, 0)["dtype"] = "quint8";
         tensor(p, 0)["sizes"] = {2, 32};
         tensor(p, 0)["quantization"] = {
             {"scheme", "per_channel_affine"}, {"axis", 0}, {"scales", {0.1, 0.2}}, {"zero_points", {0, -1}}};
       },
       "zero_points: -1 is outside quint8's range [0, 255]"},
      {"QUANT_BAD_AXIS",
       [&](Parts& p) {
         tensor(p, 0)["dtype"] = "qint8";
         tensor(p, 0)["quantization"] = {
             {"scheme", "per_channel_affine"}, {"axis", 2}, {"scales", json::array()}, {"zero_points", json::array()}};
       },
       "is not a dimension"},
      {"SKELETON_UNKNOWN_COMPRESSION", [&](Parts& p) { models(p)[0]["skeleton"]["compression"] = "lz4"; },
       "unknown compression"},
  };
  for (const Case& c : cases) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    Parts p = valid_parts();
    if (c.edit) c.edit(p);
    std::string bytes = build(p);
    const std::string name = c.name;
    if (name == "HEADER_BAD_MAGIC") bytes[0] = 'X';
    if (name == "HEADER_FUTURE_VERSION") bytes[7] = '2';
    if (name == "HEADER_TRUNCATED") bytes.resize(50);
    if (name == "FILE_TRUNCATED") bytes.pop_back();
    if (name == "FILE_EXTRA_BYTES") bytes += "x";
    if (name == "EMPTY_FILE") bytes.clear();
    ErrorCode code = ErrorCode::kInternal;
    const std::string error = open_error(bytes, &code);
    CHECK_MESSAGE(error.find(c.expected) != std::string::npos, "got: " << error);
    CHECK(code == ErrorCode::kBadBlob);
  }
}

namespace {

// Runs `fn`, which must throw Error(kBadBlob) whose message contains `mention`.
void check_bad_blob(const std::function<void()>& fn, const std::string& mention) {
  try {
    fn();
    FAIL("expected an error mentioning: " << mention);
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kBadBlob);
    CHECK_MESSAGE(std::string(e.what()).find(mention) != std::string::npos, e.what());
  }
}

// A zstd-compressed skeleton of `raw` in the valid parts.
Parts parts_with_skeleton(const std::string& raw) {
  Parts p = valid_parts();
  std::string packed(ZSTD_compressBound(raw.size()), '\0');
  packed.resize(ZSTD_compress(packed.data(), packed.size(), raw.data(), raw.size(), 1));
  p.skeletons = packed;
  auto& sk = p.manifest["models"][0]["skeleton"];
  sk["compression"] = "zstd";
  sk["length"] = packed.size();
  sk["raw_length"] = raw.size();
  return p;
}

}  // namespace

TEST_CASE("a skeleton that claims more bytes than its zstd frame holds is refused before allocating") {
  const std::string raw = "a skeleton";
  Parts p = parts_with_skeleton(raw);
  auto& sk = p.manifest["models"][0]["skeleton"];
  test::TempDir dir;
  test::write_bytes(dir / "ok.zcb", build(p));
  CHECK(zcwrap::detail::BlobFile::open(dir / "ok.zcb")->skeleton(0) == raw);

  // A raw_length the frame does not hold, within the expansion cap: refused
  // when loading, before anything is allocated.
  sk["raw_length"] = 64 * 1024;
  test::write_bytes(dir / "liar.zcb", build(p));
  auto blob = zcwrap::detail::BlobFile::open(dir / "liar.zcb");
  check_bad_blob([&] { blob->skeleton(0); }, "not a zstd frame of its recorded 65536 bytes");

  // 4 GiB claimed by a small blob: refused when the blob is opened.
  sk["raw_length"] = 1ull << 32;
  test::write_bytes(dir / "bomb.zcb", build(p));
  check_bad_blob([&] { zcwrap::detail::BlobFile::open(dir / "bomb.zcb"); }, "implausible raw_length 4294967296");
}

TEST_CASE("an honest zstd frame that expands past the cap is refused when the blob is opened") {
  // 4 MiB of zeros compress to a few hundred bytes: the frame really holds
  // them, and a reader would allocate them. Nothing a packer writes expands
  // like this.
  const Parts p = parts_with_skeleton(std::string(4u << 20, '\0'));
  REQUIRE(p.skeletons.size() * zcwrap::format::kMaxSkeletonExpansion + zcwrap::format::kSkeletonRawSlack <
          (4u << 20));
  test::TempDir dir;
  test::write_bytes(dir / "zeros.zcb", build(p));
  check_bad_blob([&] { zcwrap::detail::BlobFile::open(dir / "zeros.zcb"); }, "implausible raw_length 4194304");
}

TEST_CASE("any flipped bit in header, manifest or skeletons is refused") {
  const std::string good = build(valid_parts());
  format::Header h = format::decode_header(reinterpret_cast<const uint8_t*>(good.data()), good.size(),
                                           good.size(), "good");
  const size_t covered_end = h.skeletons_offset + h.skeletons_length;
  std::mt19937 rng(42);
  for (int trial = 0; trial < 300; ++trial) {
    std::string bytes = good;
    const size_t pos = rng() % covered_end;
    bytes[pos] = static_cast<char>(bytes[pos] ^ (1u << (rng() % 8)));
    CAPTURE(pos);
    ErrorCode code = ErrorCode::kInternal;
    CHECK(open_error(bytes, &code) != "");
    CHECK(code == ErrorCode::kBadBlob);
  }
}

TEST_CASE("truncation at every section boundary and at random points is refused") {
  const std::string good = build(valid_parts());
  format::Header h = format::decode_header(reinterpret_cast<const uint8_t*>(good.data()), good.size(),
                                           good.size(), "good");
  std::vector<size_t> cuts = {0, 1, 7, 8, 95, 96, h.manifest_offset + h.manifest_length, h.skeletons_offset + 1,
                              h.data_offset, h.data_offset + 1, good.size() - 1};
  std::mt19937 rng(7);
  for (int i = 0; i < 40; ++i) cuts.push_back(rng() % good.size());
  for (size_t cut : cuts) {
    CAPTURE(cut);
    ErrorCode code = ErrorCode::kInternal;
    CHECK(open_error(good.substr(0, cut), &code) != "");
    CHECK(code == ErrorCode::kBadBlob);
  }
}

TEST_CASE("inspect escapes control characters it prints from a blob") {
  Parts p = valid_parts();
  p.manifest["producer"] = "evil\x1b[2J\nproducer";
  p.manifest["models"][0]["tensors"][0]["path"] = "fc.\x1b]0;title\x07weight";
  test::TempDir dir;
  test::write_bytes(dir / "evil.zcb", build(p));
  const test::ProcessResult r = test::run_process({test::zcwrap_bin(), "inspect", dir / "evil.zcb"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.out.find('\x1b') == std::string::npos);
  CHECK(r.out.find('\x07') == std::string::npos);
  CHECK(r.out.find("made by evil\\x1b[2J\\nproducer\n") != std::string::npos);
  CHECK(r.out.find("fc.\\x1b]0;title\\x07weight") != std::string::npos);
}

TEST_CASE("AtomicFile::copy_from copies file to file, and leaves what it cannot copy to write()") {
  test::TempDir dir;
  std::string source(3 * 1024 * 1024 + 13, '\0');
  std::mt19937 rng(7);
  for (char& c : source) c = static_cast<char>(rng());
  test::write_bytes(dir / "source", source);
  struct stat st {};
  const zcwrap::detail::UniqueFd fd = zcwrap::detail::open_regular_file(dir / "source", &st);
  const size_t length = source.size() - 100;
  {
    zcwrap::detail::AtomicFile out(dir / "copy");
    out.write("head", 4);
    // Within one file system, as pack's source and blob usually are, all of it.
    CHECK(out.copy_from(fd.get(), 7, length) == length);
    out.write("tail", 4);
    out.commit();
  }
  CHECK(test::read_bytes(dir / "copy") == "head" + source.substr(7, length) + "tail");
  {
    // Written through to a character device: nothing is copied, nothing fails.
    zcwrap::detail::AtomicFile out("/dev/null");
    CHECK(out.copy_from(fd.get(), 0, 4096) == 0);
    out.write("x", 1);
    out.commit();
  }
}
