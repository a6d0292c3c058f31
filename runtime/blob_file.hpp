// A blob file mapped read-only and checked: header, meta checksum, manifest.
// Internal to the runtime; torch-free.
#pragma once

#include <memory>
#include <string>

#include "zcwrap/internal/file_util.hpp"
#include "zcwrap/internal/format.hpp"

namespace zcwrap::detail {

class BlobFile {
 public:
  // Maps `path` and checks everything but the storage checksums. Throws
  // Error(kInput) when it cannot be read, Error(kBadBlob) when it is not a
  // valid v1 blob. Tensors made from the mapping hold the shared_ptr.
  static std::shared_ptr<const BlobFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  const format::Header& header() const { return header_; }
  const format::Manifest& manifest() const { return manifest_; }
  const uint8_t* data() const { return region_.data(); }
  size_t size() const { return region_.size(); }

  // First byte of storage `index` inside the mapping.
  const uint8_t* storage_data(size_t index) const {
    return region_.data() + header_.data_offset + manifest_.storages[index].offset;
  }

  // The skeleton bytes of model `index`, decompressed. Throws Error(kBadBlob).
  std::string skeleton(size_t index) const;

  // Index of the model called `name`, or -1.
  int find_model(const std::string& name) const;

 private:
  std::string path_;
  MappedRegion region_;
  format::Header header_;
  format::Manifest manifest_;
};

}  // namespace zcwrap::detail
