#include "blob_file.hpp"

#include <zstd.h>

#include "zcwrap/error.hpp"

namespace zcwrap::detail {

std::shared_ptr<const BlobFile> BlobFile::open(const std::string& path) {
  auto blob = std::make_shared<BlobFile>();
  blob->path_ = path;
  blob->region_ = MappedRegion::map_file(path);
  const uint8_t* bytes = blob->region_.data();
  const size_t size = blob->region_.size();
  blob->header_ = format::decode_header(bytes, size, size, path);
  const format::Header& h = blob->header_;
  uint64_t actual = format::meta_checksum(bytes, h);
  if (actual != h.meta_checksum) {
    throw Error(ErrorCode::kBadBlob,
                path + ": header/manifest/skeleton checksum mismatch (stored " +
                    format::hex64(h.meta_checksum) + ", computed " + format::hex64(actual) +
                    "): the blob is corrupt; re-pack it");
  }
  blob->manifest_ = format::parse_manifest(reinterpret_cast<const char*>(bytes + h.manifest_offset),
                                           h.manifest_length, h, path);
  return blob;
}

std::string BlobFile::skeleton(size_t index) const {
  const format::ModelEntry& model = manifest_.models.at(index);
  const format::SkeletonEntry& sk = model.skeleton;
  const uint8_t* src = region_.data() + header_.skeletons_offset + sk.offset;
  if (sk.compression == "none") return std::string(reinterpret_cast<const char*>(src), sk.length);
  std::string raw(sk.raw_length, '\0');
  size_t n = ZSTD_decompress(raw.data(), raw.size(), src, sk.length);
  if (ZSTD_isError(n) || n != sk.raw_length) {
    throw Error(ErrorCode::kBadBlob,
                path_ + ": skeleton of model '" + model.name + "' does not decompress" +
                    (ZSTD_isError(n) ? std::string(": ") + ZSTD_getErrorName(n)
                                     : " to its recorded " + std::to_string(sk.raw_length) + " bytes"));
  }
  return raw;
}

int BlobFile::find_model(const std::string& name) const {
  for (size_t i = 0; i < manifest_.models.size(); ++i) {
    if (manifest_.models[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

}  // namespace zcwrap::detail
