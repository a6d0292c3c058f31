// What the fuzz target and tests/test_corpus.cpp assert about a blob that
// parse_blob accepted, and the checksum fix-up that lets mutated manifests
// reach the manifest checks. Header-only: the fuzz target is built without
// the rest of the test support (and without LibTorch).
#pragma once

#include <zstd.h>

#include <cstdint>
#include <string>
#include <vector>

#include "blob_file.hpp"
#include "zcwrap/error.hpp"
#include "format.hpp"

namespace zcwrap::test {

// The fuzz target does not decompress skeletons that claim more than this:
// the format allows up to 256 x the stored length and at most
// format::kMaxSkeletonRawLength (1 GiB), which BlobFile::skeleton allocates
// once the frame agrees, and a sanitized process would report that as
// out-of-memory.
inline constexpr uint64_t kMaxCheckedSkeletonRawLength = 16u << 20;

// A copy of the `size` bytes at `bytes` whose meta checksum is recomputed,
// or false when the header does not decode (there is nothing to fix) or the
// stored checksum is already right (the copy would parse the same). The
// checksum guards everything after the header, so without this nearly every
// mutation of the manifest is refused by the checksum alone and the manifest
// checks behind it never see fuzzed input.
inline bool fix_meta_checksum(const uint8_t* bytes, size_t size, std::vector<uint8_t>* out) {
  format::Header h;
  try {
    h = format::decode_header(bytes, size, size, "fix-up");
  } catch (const Error&) {
    return false;
  }
  const uint64_t actual = format::meta_checksum(bytes, h);
  if (actual == h.meta_checksum) return false;
  out->assign(bytes, bytes + size);
  for (size_t i = 0; i < 8; ++i) {
    (*out)[format::kChecksumFieldOffset + i] = static_cast<uint8_t>(actual >> (8 * i));
  }
  return true;
}

namespace detail_checks {

// Whether [offset, offset + length) lies inside [0, size), without overflow.
inline bool inside(uint64_t offset, uint64_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

// Where touch() stores what it reads, so the reads are not optimized away.
inline volatile uint8_t touched_byte = 0;

// Reads the first and last byte of a range already checked to be inside the
// blob; AddressSanitizer reports the read if that check is wrong.
inline void touch(const uint8_t* bytes, uint64_t offset, uint64_t length) {
  if (length == 0) return;
  touched_byte = bytes[offset];
  touched_byte = bytes[offset + length - 1];
}

}  // namespace detail_checks

// Does with a parsed blob what a reader does next: finds every section,
// storage and tensor, and decompresses every skeleton the way
// BlobFile::skeleton does. Returns "" when every range the manifest gives
// lies inside the `size` bytes and the parser's stated invariants hold, else
// what is wrong (a parser bug: parse_blob promised a checked layout).
inline std::string check_reader_ranges(const uint8_t* bytes, size_t size,
                                       const detail::ParsedBlob& layout) {
  using detail_checks::inside;
  using detail_checks::touch;
  const format::Header& h = layout.header;
  const format::Manifest& m = layout.manifest;
  auto u = [](uint64_t v) { return std::to_string(v); };

  const struct {
    const char* name;
    uint64_t offset, length;
  } sections[] = {{"header", 0, h.header_length},
                  {"manifest", h.manifest_offset, h.manifest_length},
                  {"skeletons", h.skeletons_offset, h.skeletons_length},
                  {"data", h.data_offset, h.data_length}};
  for (const auto& s : sections) {
    if (!inside(s.offset, s.length, size)) {
      return std::string(s.name) + " section [" + u(s.offset) + ", +" + u(s.length) +
             ") outside the " + u(size) + " bytes";
    }
    touch(bytes, s.offset, s.length);
  }
  if (h.data_offset % format::kPageSize != 0) return "data_offset " + u(h.data_offset) + " not page-aligned";

  uint64_t next_free = 0;
  for (size_t i = 0; i < m.storages.size(); ++i) {
    const format::StorageEntry& s = m.storages[i];
    if (!inside(s.offset, s.nbytes, h.data_length)) {
      return "storage " + u(i) + " [" + u(s.offset) + ", +" + u(s.nbytes) + ") outside the data section";
    }
    if (s.offset < next_free) return "storage " + u(i) + " overlaps the one before";
    if (s.offset % format::storage_alignment(s.nbytes, h.alignment) != 0) {
      return "storage " + u(i) + " offset " + u(s.offset) + " misaligned";
    }
    next_free = s.offset + s.nbytes;
    touch(bytes, h.data_offset + s.offset, s.nbytes);
  }

  for (const format::ModelEntry& model : m.models) {
    for (const format::TensorEntry& t : model.tensors) {
      const std::string where = "model '" + model.name + "' tensor '" + t.path + "'";
      const size_t item = format::dtype_size(t.dtype);
      if (item == 0) return where + ": unknown dtype accepted";
      if (t.storage >= m.storages.size()) return where + ": storage " + u(t.storage) + " does not exist";
      if (t.sizes.size() != t.strides.size()) return where + ": sizes and strides differ in rank";
      const format::StorageEntry& s = m.storages[t.storage];
      // Computed afresh in 128 bits: the elements the tensor reaches.
      using u128 = unsigned __int128;
      u128 numel = 1;
      u128 last = t.storage_offset;
      for (size_t d = 0; d < t.sizes.size(); ++d) {
        if (t.sizes[d] < 0 || t.strides[d] < 0) return where + ": negative size or stride accepted";
        numel *= static_cast<uint64_t>(t.sizes[d]);
        if (numel > UINT64_MAX) return where + ": element count overflows";
      }
      if (numel == 0) continue;
      for (size_t d = 0; d < t.sizes.size(); ++d) {
        last += u128(static_cast<uint64_t>(t.sizes[d]) - 1) * static_cast<uint64_t>(t.strides[d]);
        if (last > UINT64_MAX) return where + ": extent overflows";
      }
      const u128 first_byte = u128(t.storage_offset) * item;
      const u128 end_byte = (last + 1) * item;
      if (end_byte > s.nbytes) return where + ": reaches past its storage";
      touch(bytes, h.data_offset + s.offset + static_cast<uint64_t>(first_byte),
            static_cast<uint64_t>(end_byte - first_byte));
    }

    const format::SkeletonEntry& sk = model.skeleton;
    if (!inside(sk.offset, sk.length, h.skeletons_length)) {
      return "model '" + model.name + "': skeleton outside its section";
    }
    const uint8_t* src = bytes + h.skeletons_offset + sk.offset;
    touch(src, 0, sk.length);
    if (sk.compression == "none") {
      if (sk.raw_length != sk.length) return "model '" + model.name + "': raw_length differs from length";
    } else if (sk.compression != "zstd") {
      return "model '" + model.name + "': unknown compression accepted";
    } else if (sk.raw_length <= kMaxCheckedSkeletonRawLength) {
      // As BlobFile::skeleton does it; a zstd error is a refusal, not a bug.
      std::string raw(sk.raw_length, '\0');
      const size_t n = ZSTD_decompress(raw.data(), raw.size(), src, sk.length);
      if (!ZSTD_isError(n) && n > raw.size()) return "model '" + model.name + "': zstd overran its buffer";
    }
  }
  return "";
}

}  // namespace zcwrap::test
