// A blob file mapped read-only and checked: header, meta checksum, manifest.
// Internal to the runtime; torch-free.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "file_util.hpp"
#include "format.hpp"

namespace zcwrap::detail {

// Header and manifest of a blob, checked. Pure function of the bytes: the
// container parser that the fuzz target drives.
struct ParsedBlob {
  format::Header header;
  format::Manifest manifest;
};

// Checks `size` bytes of a whole blob: header, meta checksum, manifest.
// Throws Error(kBadBlob) naming `path`; never reads outside the bytes.
ParsedBlob parse_blob(const uint8_t* bytes, size_t size, const std::string& path);

class BlobFile;

// What an actor config or a pickled wrapper pins of its blob.
struct Pins {
  uint64_t size = 0;
  uint64_t meta_checksum = 0;
};

// Throws Error(kStale) unless `blob` is the blob `pins` names: the one check
// of a blob against what its sender saw. `by` names the sender ("this actor
// config").
void check_pins(const BlobFile& blob, const Pins& pins, const std::string& by);

class BlobFile {
 public:
  // Maps `path` and checks everything but the storage checksums. Throws
  // Error(kInput) when it cannot be read, Error(kBadBlob) when it is not a
  // valid v1 blob. Tensors made from the mapping hold the shared_ptr.
  // kCopyOnWrite makes the mapping private and writable. The file stays open, with flock(LOCK_SH)
  // held, as long as this object: `zcwrap gc` never removes a mapped blob.
  static std::shared_ptr<const BlobFile> open(const std::string& path, Access access = Access::kReadOnly);
  // The same for a file the caller opened (open_regular_file; `st` its
  // stat), so that a file sniffed for its magic is not opened twice.
  static std::shared_ptr<const BlobFile> open_fd(UniqueFd fd, const struct stat& st, const std::string& path,
                                                 Access access = Access::kReadOnly);

  // open(), then check_pins: Error(kStale) when the file was replaced.
  static std::shared_ptr<const BlobFile> open_pinned(const std::string& path, const Pins& pins, Access access);

  // Checks the blob in [data, data + size), memory the caller owns (shared
  // memory, a Ray object), like open(); `name` stands for the path in
  // messages. `owner` is kept alive as long as this object, and so as long
  // as any tensor made from it. Throws Error(kBadBlob) as open() does, and
  // when `data` is not 64-byte aligned (storages are aligned relative to it).
  //
  // The weights are read-only here as they are in a file's mapping, whatever
  // the caller's memory allows, and the caller's protection is not changed:
  // shared memory (Ray's object store maps it writable) is mapped a second
  // time, read-only (same pages, no copy); memory already read-only is used
  // as it is; private writable memory (bytes, a heap array) is copied once
  // into a read-only mapping. kCopyOnWrite: a private, writable copy
  // (memory offers no file to map privately).
  static std::shared_ptr<const BlobFile> open_memory(const void* data, size_t size,
                                                     std::shared_ptr<const void> owner, std::string name,
                                                     Access access = Access::kReadOnly);

  // Whether the bytes are a caller's memory region (open_memory), not a file.
  bool in_memory() const { return owner_ != nullptr; }

  const std::string& path() const { return path_; }
  const format::Header& header() const { return header_; }
  const format::Manifest& manifest() const { return manifest_; }
  const uint8_t* data() const { return base_; }
  size_t size() const { return size_; }

  // First byte of the data section inside the mapping. Mutable for LibTorch's
  // sake: the pages are read-only unless opened copy-on-write.
  uint8_t* data_section() const { return const_cast<uint8_t*>(base_) + header_.data_offset; }

  // First byte of storage `index` inside the mapping.
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
  // The same bytes in place in the mapping, without a copy, when the
  // skeleton is stored uncompressed; nullopt when it is compressed.
  std::optional<std::string_view> skeleton_in_place(size_t index) const;

  // The pickle of a Python pipeline object's attributes other than its
  // modules (manifest "pipeline_object"), decompressed; nullopt when the blob
  // has none. Throws Error(kBadBlob).
  std::optional<std::string> pipeline_pickle() const;

  // Index of the model called `name`, or -1.
  int find_model(const std::string& name) const;

  BlobFile() = default;

  BlobFile(const BlobFile&) = delete;
  BlobFile& operator=(const BlobFile&) = delete;
  ~BlobFile();

 private:
  // Checks the bytes at base_ and, for read-only bytes, registers them with
  // the fault guard (a write there then says why it faulted).
  void check(Access access);

  int fault_handle_ = -1;
  std::string path_;
  UniqueFd fd_;                        // a file's descriptor, holding flock(LOCK_SH)
  MappedRegion region_;                // a file's mapping, a read-only alias or copy of memory, or empty
  std::shared_ptr<const void> owner_;  // a caller's memory region, or null
  const uint8_t* base_ = nullptr;      // the blob's bytes, in one or the other
  size_t size_ = 0;
  format::Header header_;
  format::Manifest manifest_;

  // The bytes of a skeletons-section record, decompressed; `what` names it.
  std::string record(const format::SkeletonEntry& sk, const std::string& what) const;
};

}  // namespace zcwrap::detail
