// A blob file mapped read-only and checked: header, meta checksum, manifest.
// Internal to the runtime; torch-free.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "zcwrap/internal/file_util.hpp"
#include "zcwrap/internal/format.hpp"

namespace zcwrap::detail {

// Header and manifest of a blob, checked. Pure function of the bytes: the
// container parser that the fuzz target drives.
struct BlobLayout {
  format::Header header;
  format::Manifest manifest;
};

// Checks `size` bytes of a whole blob: header, meta checksum, manifest.
// Throws Error(kBadBlob) naming `path`; never reads outside the bytes.
BlobLayout parse_blob(const uint8_t* bytes, size_t size, const std::string& path);

class BlobFile {
 public:
  // Maps `path` and checks everything but the storage checksums. Throws
  // Error(kInput) when it cannot be read, Error(kBadBlob) when it is not a
  // valid v1 blob. Tensors made from the mapping hold the shared_ptr.
  // With `copy_on_write` the mapping is private and writable (see
  // UnwrapOptions::copy_on_write).
  static std::shared_ptr<const BlobFile> open(const std::string& path, bool copy_on_write = false);

  const std::string& path() const { return path_; }
  const format::Header& header() const { return header_; }
  const format::Manifest& manifest() const { return manifest_; }
  const uint8_t* data() const { return region_.data(); }
  size_t size() const { return region_.size(); }

  // First byte of the data section inside the mapping.
  uint8_t* data_section() const { return region_.mutable_data() + header_.data_offset; }

  // First byte of storage `index` inside the mapping. Mutable for LibTorch's
  // sake: the pages are read-only unless opened copy-on-write.
  uint8_t* storage_data(size_t index) const {
    return data_section() + manifest_.storages[index].offset;
  }

  // Storages whose bytes do not match their XXH3 checksum, hashed on
  // `threads` threads (0: all cores). Empty when everything matches.
  std::vector<size_t> bad_storages(unsigned threads = 0) const;

  // "model 'm' tensor 'fc.weight'" for the first tensor that uses storage
  // `index` ("no tensor" when none does).
  std::string storage_user(size_t index) const;

  // The skeleton bytes of model `index`, decompressed. Throws Error(kBadBlob).
  std::string skeleton(size_t index) const;

  // Index of the model called `name`, or -1.
  int find_model(const std::string& name) const;

  BlobFile() = default;
  BlobFile(const BlobFile&) = delete;
  BlobFile& operator=(const BlobFile&) = delete;
  ~BlobFile();

 private:
  int fault_handle_ = -1;
  std::string path_;
  MappedRegion region_;
  format::Header header_;
  format::Manifest manifest_;
};

}  // namespace zcwrap::detail
