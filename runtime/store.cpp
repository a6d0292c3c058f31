#include "store.hpp"

#include <sys/statvfs.h>

#include <cstdlib>

#include "blob_file.hpp"
#include "zcwrap/error.hpp"
#include "file_util.hpp"

namespace zcwrap::detail {

std::string store_dir(const PackOptions& options) {
  if (!options.store_dir.empty()) return options.store_dir;
  const char* env = std::getenv("ZCWRAP_STORE");
  return env != nullptr && *env != '\0' ? env : "/dev/shm/zcwrap";
}

std::string store_blob(const PreparedBlob& blob, const PackOptions& options) {
  const std::string dir = store_dir(options);
  if (int err = make_dirs(dir); err != 0) {
    throw Error(ErrorCode::kWrite, dir + ": cannot create the zcwrap store: " + errno_text(err) +
                                       "; set ZCWRAP_STORE to a writable folder");
  }
  const std::string path = absolute_path(dir + "/" + format::hex64(blob.header.meta_checksum) + ".zcb");
  try {
    auto existing = BlobFile::open(path);
    if (existing->header().meta_checksum == blob.header.meta_checksum) return path;
  } catch (const Error&) {
    // Absent or damaged: write it afresh below.
  }
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) == 0) {
    const uint64_t free_bytes = uint64_t(fs.f_bavail) * fs.f_frsize;
    if (free_bytes < blob.header.file_size) {
      throw Error(ErrorCode::kWrite,
                  dir + ": no room for a " + std::to_string(blob.header.file_size) + "-byte blob (" +
                      std::to_string(free_bytes) +
                      " bytes free); set ZCWRAP_STORE to a folder on a larger filesystem "
                      "(containers often give /dev/shm only 64 MiB)");
    }
  }
  try {
    write_blob(blob, path, options.progress);
  } catch (const Error& e) {
    throw Error(e.code(), std::string(e.what()) +
                              "; set ZCWRAP_STORE to a folder with room for the blob if this one is full");
  }
  return path;
}

}  // namespace zcwrap::detail
