#include "blob_file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include <xxhash.h>
#include <zstd.h>

#include "fault_guard.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::detail {

ParsedBlob parse_blob(const uint8_t* bytes, size_t size, const std::string& path) {
  ParsedBlob parsed;
  parsed.header = format::decode_header(bytes, size, size, path);
  const format::Header& h = parsed.header;
  const uint64_t actual = format::meta_checksum(bytes, h);
  if (actual != h.meta_checksum) {
    throw Error(ErrorCode::kBadBlob,
                path + ": header/manifest/skeleton checksum mismatch (stored " +
                    format::hex64(h.meta_checksum) + ", computed " + format::hex64(actual) +
                    "): the blob is corrupt; re-pack it");
  }
  parsed.manifest = format::parse_manifest(reinterpret_cast<const char*>(bytes + h.manifest_offset),
                                           h.manifest_length, h, path);
  return parsed;
}

void check_pins(const BlobFile& blob, const Pins& pins, const std::string& by) {
  if (blob.size() == pins.size && blob.header().meta_checksum == pins.meta_checksum) return;
  throw Error(ErrorCode::kStale, blob.path() + ": is not the blob " + by + " was made for (it pins " +
                                     std::to_string(pins.size) + " bytes, checksum " +
                                     format::hex64(pins.meta_checksum) + "; found " + std::to_string(blob.size()) +
                                     " bytes, checksum " + format::hex64(blob.header().meta_checksum) +
                                     "): it was re-packed or replaced");
}

std::shared_ptr<const BlobFile> BlobFile::open(const std::string& path, Access access) {
  struct stat st {};
  UniqueFd fd = open_regular_file(path, &st);
  return open_fd(std::move(fd), st, path, access);
}

std::shared_ptr<const BlobFile> BlobFile::open_fd(UniqueFd fd, const struct stat& st, const std::string& path,
                                                  Access access) {
  auto blob = std::make_shared<BlobFile>();
  blob->path_ = path;
  blob->fd_ = std::move(fd);
  lock_shared(blob->fd_.get(), path);
  blob->region_ = MappedRegion::map_fd(blob->fd_.get(), static_cast<uint64_t>(st.st_size), path, access);
  blob->base_ = blob->region_.data();
  blob->size_ = blob->region_.size();
  blob->check(access);
  return blob;
}

std::shared_ptr<const BlobFile> BlobFile::open_pinned(const std::string& path, const Pins& pins, Access access) {
  auto blob = open(path, access);
  check_pins(*blob, pins, "this wrapper");
  return blob;
}

std::shared_ptr<const BlobFile> BlobFile::open_memory(const void* data, size_t size,
                                                      std::shared_ptr<const void> owner, std::string name,
                                                      Access access) {
  if (data == nullptr && size != 0) throw Error(ErrorCode::kUsage, name + ": null memory region");
  if (reinterpret_cast<uintptr_t>(data) % format::kMinAlignment != 0) {
    throw Error(ErrorCode::kBadBlob, name + ": memory region at " +
                                         std::to_string(reinterpret_cast<uintptr_t>(data)) + " is not " +
                                         std::to_string(format::kMinAlignment) + "-byte aligned");
  }
  auto blob = std::make_shared<BlobFile>();
  blob->path_ = std::move(name);
  // Never null, so in_memory() holds even for an owner the caller left empty.
  blob->owner_ = owner ? std::move(owner) : std::make_shared<int>(0);
  blob->size_ = size;
  if (access == Access::kCopyOnWrite) {
    blob->region_ = MappedRegion::copy_of(data, size, Access::kCopyOnWrite);
    blob->base_ = blob->region_.data();
  } else if (MappedRegion alias = MappedRegion::alias_readonly(data, size); alias.size() != 0) {
    // Same offset within the page as `data`, so the blob's alignment holds.
    const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
    blob->base_ = alias.data() + (reinterpret_cast<uintptr_t>(data) & (page - 1));
    blob->region_ = std::move(alias);
  } else if (size == 0 || mapped_readonly(data, size)) {
    blob->base_ = static_cast<const uint8_t*>(data);
  } else {
    blob->region_ = MappedRegion::copy_of(data, size, Access::kReadOnly);
    blob->base_ = blob->region_.data();
  }
  blob->check(access);
  return blob;
}

void BlobFile::check(Access access) {
  ParsedBlob parsed = parse_blob(base_, size_, path_);
  header_ = parsed.header;
  manifest_ = std::move(parsed.manifest);
  if (access == Access::kReadOnly) fault_handle_ = register_readonly_mapping(base_, size_, in_memory() ? path_ : absolute_path(path_));
}

BlobFile::~BlobFile() { unregister_readonly_mapping(fault_handle_); }

std::string BlobFile::skeleton(size_t index) const {
  const format::ModelEntry& model = manifest_.models.at(index);
  return record(model.skeleton, "skeleton of model '" + model.name + "'");
}

std::optional<std::string_view> BlobFile::skeleton_in_place(size_t index) const {
  const format::SkeletonEntry& sk = manifest_.models.at(index).skeleton;
  if (sk.compression != "none") return std::nullopt;
  return std::string_view(reinterpret_cast<const char*>(base_ + header_.skeletons_offset + sk.offset), sk.length);
}

std::optional<std::string> BlobFile::pipeline_pickle() const {
  if (!manifest_.pipeline_object) return std::nullopt;
  return record(*manifest_.pipeline_object, "pipeline object's pickle");
}

std::string BlobFile::record(const format::SkeletonEntry& sk, const std::string& what) const {
  const uint8_t* src = base_ + header_.skeletons_offset + sk.offset;
  if (sk.compression == "none") return std::string(reinterpret_cast<const char*>(src), sk.length);
  // The frame must say it holds raw_length bytes before that much is
  // allocated: a small blob must not be able to make a worker allocate GiBs.
  const unsigned long long content = ZSTD_getFrameContentSize(src, sk.length);
  if (content != sk.raw_length) {
    throw Error(ErrorCode::kBadBlob, path_ + ": " + what + " is not a zstd frame of its recorded " +
                                         std::to_string(sk.raw_length) + " bytes");
  }
  std::string raw(sk.raw_length, '\0');
  size_t n = ZSTD_decompress(raw.data(), raw.size(), src, sk.length);
  if (ZSTD_isError(n) || n != sk.raw_length) {
    throw Error(ErrorCode::kBadBlob,
                path_ + ": " + what + " does not decompress" +
                    (ZSTD_isError(n) ? std::string(": ") + ZSTD_getErrorName(n)
                                     : " to its recorded " + std::to_string(sk.raw_length) + " bytes"));
  }
  return raw;
}

std::vector<size_t> BlobFile::bad_storages(unsigned threads) const {
  const auto& storages = manifest_.storages;
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<size_t>(threads, std::max<size_t>(storages.size(), 1)));
  // Workers take the next storage from a shared counter, so one large
  // storage does not hold up a fixed share of small ones.
  std::atomic<size_t> next{0};
  std::vector<char> bad(storages.size(), 0);
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < storages.size();) {
      bad[i] = XXH3_64bits(storage_data(i), storages[i].nbytes) != storages[i].xxh3;
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  std::vector<size_t> out;
  for (size_t i = 0; i < bad.size(); ++i) {
    if (bad[i]) out.push_back(i);
  }
  return out;
}

std::string BlobFile::storage_user(size_t index) const {
  for (const format::ModelEntry& model : manifest_.models) {
    for (const format::TensorEntry& t : model.tensors) {
      if (t.storage == index) return "model '" + model.name + "' tensor '" + t.path + "'";
    }
  }
  return "no tensor";
}

int BlobFile::find_model(const std::string& name) const {
  for (size_t i = 0; i < manifest_.models.size(); ++i) {
    if (manifest_.models[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace zcwrap::detail
