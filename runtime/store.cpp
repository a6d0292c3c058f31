#include "store.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "zcwrap/error.hpp"

namespace zcwrap {

std::string store_folder(const std::string& requested) {
  if (!requested.empty()) return detail::absolute_path(requested);
  const char* env = std::getenv("ZCWRAP_STORE");
  if (env != nullptr && *env != '\0') return detail::absolute_path(env);
  // One folder per user: a shared default in a world-writable /dev/shm would
  // belong to whoever made it first.
  return "/dev/shm/zcwrap-" + std::to_string(::geteuid());
}

namespace detail {
namespace {

constexpr size_t kChecksumDigits = 16;
constexpr char kBlobSuffix[] = ".zcb";
constexpr char kCodeSuffix[] = ".so";
constexpr char kKernelsSuffix[] = ".kernels";
constexpr char kTempInfix[] = ".tmp-";

[[noreturn]] void refuse(const std::string& path, const std::string& why) {
  throw Error(ErrorCode::kWrite, path + ": " + why);
}

// What follows a store name's 16-digit hex checksum; empty for a name
// that does not start with one.
std::string store_suffix(const std::string& name) {
  uint64_t ignored = 0;
  if (name.size() <= kChecksumDigits || !format::parse_hex64(name.substr(0, kChecksumDigits), &ignored)) return "";
  return name.substr(kChecksumDigits);
}

// A blob, "<meta checksum>.zcb", or an AOTInductor model's code placed at
// unwrap, "<xxh3 of the .so>.so" (aoti.cpp).
bool is_blob_name(const std::string& name) {
  const std::string suffix = store_suffix(name);
  return suffix == kBlobSuffix || suffix == kCodeSuffix;
}

// The kernel files of a GPU AOTInductor model, placed at unwrap beside its
// code: a folder "<xxh3 of the .so>.kernels" (aoti.cpp).
bool is_kernels_name(const std::string& name) { return store_suffix(name) == kKernelsSuffix; }

// Removes the kernel folder open (and flock(LOCK_EX)ed) as `fd` and named
// `name` in `dir_fd`: its files, then itself. Returns the bytes it held.
uint64_t remove_kernels(int dir_fd, const std::string& name, int fd, const std::string& path, bool dry_run) {
  DIR* dir = ::fdopendir(::dup(fd));
  if (dir == nullptr) refuse(path, "cannot list: " + errno_text(errno));
  std::vector<std::string> files;
  while (const dirent* entry = ::readdir(dir)) {
    if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0) files.emplace_back(entry->d_name);
  }
  ::closedir(dir);
  uint64_t bytes = 0;
  for (const std::string& f : files) {
    struct stat st {};
    if (::fstatat(fd, f.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) bytes += st.st_size;
    if (!dry_run && ::unlinkat(fd, f.c_str(), 0) != 0) refuse(path + "/" + f, "cannot remove: " + errno_text(errno));
  }
  if (!dry_run && ::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0) {
    refuse(path, "cannot remove: " + errno_text(errno));
  }
  return bytes;
}

// A pack's or a placement's temporary: "<store name>.tmp-XXXXXX" (AtomicFile).
bool is_temp_name(const std::string& name) {
  const size_t infix = name.find(kTempInfix);
  return infix != std::string::npos && infix + std::strlen(kTempInfix) < name.size() &&
         is_blob_name(name.substr(0, infix));
}

// Whether `name` in `dir_fd` still leads to the file open as `fd` (gc may
// have removed it between the open and the lock).
bool still_named(int dir_fd, const std::string& name, int fd) {
  struct stat mine {}, named {};
  return ::fstat(fd, &mine) == 0 && ::fstatat(dir_fd, name.c_str(), &named, AT_SYMLINK_NOFOLLOW) == 0 &&
         mine.st_dev == named.st_dev && mine.st_ino == named.st_ino;
}

// Whether the file open as `fd` (`size` bytes) holds exactly the bytes
// write_blob would write for `blob`: header, manifest, skeletons and every
// storage (the padding between them is never read). A name only claims a
// checksum of the metadata; a file planted under it with other weights must
// not be reused.
bool holds_blob(int fd, uint64_t size, const PreparedBlob& blob) {
  const format::Header& h = blob.header;
  if (size != h.file_size) return false;
  MappedRegion file = MappedRegion::map_fd(fd, size, "store blob");
  ::madvise(file.mutable_data(), file.size(), MADV_SEQUENTIAL);
  const uint8_t* bytes = file.data();
  const std::vector<uint8_t> header = format::encode_header(h);
  if (std::memcmp(bytes, header.data(), header.size()) != 0 ||
      std::memcmp(bytes + h.manifest_offset, blob.manifest.data(), blob.manifest.size()) != 0 ||
      std::memcmp(bytes + h.skeletons_offset, blob.skeletons.data(), blob.skeletons.size()) != 0) {
    return false;
  }
  for (size_t i = 0; i < blob.entries.size(); ++i) {
    const format::StorageEntry& e = blob.entries[i];
    if (e.nbytes != 0 &&
        std::memcmp(bytes + h.data_offset + e.offset, blob.storages[i].data_ptr().get(), e.nbytes) != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

StoreFolder open_store(const std::string& requested, bool create) {
  StoreFolder folder;
  folder.path = requested;
  const char* what = "the zcwrap store";
  if (create) {
    if (int err = make_dirs(parent_dir(folder.path)); err != 0) {
      refuse(folder.path, std::string("cannot create ") + what + ": " + errno_text(err) +
                              "; set ZCWRAP_STORE to a folder of your own");
    }
    if (::mkdir(folder.path.c_str(), 0700) != 0 && errno != EEXIST) {
      refuse(folder.path, std::string("cannot create ") + what + ": " + errno_text(errno) +
                              "; set ZCWRAP_STORE to a folder of your own");
    }
  }
  folder.fd = UniqueFd(::open(folder.path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!folder.fd.valid()) {
    const int err = errno;
    struct stat st {};
    if (::lstat(folder.path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
      refuse(folder.path, std::string("is a symbolic link; ") + what +
                              " must be a real folder (a link can be turned to another folder)");
    }
    refuse(folder.path, std::string("cannot open ") + what + ": " + errno_text(err));
  }
  struct stat st {};
  if (::fstat(folder.fd.get(), &st) != 0) refuse(folder.path, "cannot stat: " + errno_text(errno));
  if (st.st_uid != ::geteuid()) {
    refuse(folder.path, std::string("is owned by uid ") + std::to_string(st.st_uid) + ", not by you (uid " +
                            std::to_string(::geteuid()) + "): its owner could change the blobs workers load; " +
                            "use a folder of your own (ZCWRAP_STORE)");
  }
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    refuse(folder.path, std::string("is writable by ") + ((st.st_mode & S_IWOTH) ? "others" : "its group") +
                            " (mode " + mode + "): anyone who can write it could replace the blobs workers " +
                            "load; chmod go-w it, or use a folder of your own (ZCWRAP_STORE)");
  }
  return folder;
}

StoredBlob store_blob(const PreparedBlob& blob, const PackOptions& options) {
  const StoreFolder folder = open_store(store_folder(options.store_dir), /*create=*/true);
  const std::string name = format::hex64(blob.header.meta_checksum) + kBlobSuffix;
  const std::string path = folder.path + "/" + name;
  const auto mode = static_cast<mode_t>(options.store_file_mode & 0777);
  // A few rounds at most: each one is lost only to a gc that removed the
  // file between our open and our lock.
  for (int round = 0; round < 8; ++round) {
    UniqueFd fd(::openat(folder.fd.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    const bool absent = !fd.valid() && errno == ENOENT;
    struct stat st {};
    if (fd.valid() && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == ::geteuid()) {
      lock_shared(fd.get(), path);
      if (!still_named(folder.fd.get(), name, fd.get())) continue;
      if (holds_blob(fd.get(), static_cast<uint64_t>(st.st_size), blob)) {
        if ((st.st_mode & 0777) != mode) ::fchmod(fd.get(), mode);
        return {path, std::make_shared<UniqueFd>(std::move(fd))};
      }
    }
    // Absent, a link, a FIFO, another user's file, or other bytes: written
    // afresh, and renamed over the name (which replaces a link itself).
    AtomicFile file(folder.fd.get(), folder.path, name, mode);
    struct statvfs fs {};
    if (::fstatvfs(folder.fd.get(), &fs) == 0 && fs.f_blocks != 0) {
      const uint64_t free_bytes = uint64_t(fs.f_bavail) * fs.f_frsize;
      if (free_bytes < blob.header.file_size) {
        refuse(folder.path, "no room for a " + std::to_string(blob.header.file_size) + "-byte blob (" +
                                std::to_string(free_bytes) +
                                " bytes free); set ZCWRAP_STORE to a folder on a larger filesystem "
                                "(containers often give /dev/shm only 64 MiB), or run zcwrap gc");
      }
    }
    try {
      write_blob(blob, file, options.progress);
    } catch (const Error& e) {
      throw Error(e.code(), std::string(e.what()) +
                                "; set ZCWRAP_STORE to a folder with room for the blob if this one is full");
    }
    // Where the name was free, another process may have stored the same
    // blob meanwhile: that one is used (next round), not renamed over.
    if (absent) {
      if (!file.commit_unless_present()) continue;
    } else {
      file.commit();
    }
    return {path, std::make_shared<UniqueFd>(file.take_fd())};
  }
  refuse(path, "removed by a concurrent zcwrap gc 8 times in a row");
}

}  // namespace detail

std::vector<StoreFile> gc(const GcOptions& options) {
  const std::string path = store_folder(options.store_dir);
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 && errno == ENOENT) return {};
  const detail::StoreFolder folder = detail::open_store(path, /*create=*/false);
  const int dir_fd = folder.fd.get();
  DIR* dir = ::fdopendir(::dup(dir_fd));
  if (dir == nullptr) detail::refuse(path, "cannot list: " + detail::errno_text(errno));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(dir)) names.emplace_back(entry->d_name);
  ::closedir(dir);

  std::vector<StoreFile> removed;
  for (const std::string& name : names) {
    const bool temporary = detail::is_temp_name(name);
    if (detail::is_kernels_name(name)) {
      // Held (flock(LOCK_SH)) by every process whose model may still load a kernel from it.
      detail::UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!fd.valid() || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0 || !detail::still_named(dir_fd, name, fd.get())) {
        continue;
      }
      const std::string where = folder.path + "/" + name;
      removed.push_back({where, detail::remove_kernels(dir_fd, name, fd.get(), where, options.dry_run), false});
      continue;
    }
    if (!temporary && !detail::is_blob_name(name)) continue;  // not the store's: left alone
    detail::UniqueFd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!fd.valid()) {
      // A link under a store name is no blob; remove the link, never its target.
      if (errno == ELOOP && (options.dry_run || ::unlinkat(dir_fd, name.c_str(), 0) == 0)) {
        removed.push_back({folder.path + "/" + name, 0, temporary});
      }
      continue;
    }
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    // Mapped, held or being written: someone holds LOCK_SH. Never wait.
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;
    if (!detail::still_named(dir_fd, name, fd.get())) continue;
    if (!options.dry_run && ::unlinkat(dir_fd, name.c_str(), 0) != 0) {
      detail::refuse(folder.path + "/" + name, "cannot remove: " + detail::errno_text(errno));
    }
    removed.push_back({folder.path + "/" + name, static_cast<uint64_t>(st.st_size), temporary});
  }
  return removed;
}

}  // namespace zcwrap
