// RAII file handles, read-only mappings and atomic file replacement.
// Internal (runtime and cli); torch-free.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace zcwrap::detail {

// An owned file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  [[nodiscard]] int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// How bytes are mapped: read-only and shared by every process (the default),
// or private and writable, each process's writes its own (see
// UnwrapOptions::copy_on_write).
enum class Access { kReadOnly, kCopyOnWrite };

// A read-only, shared mapping of a whole file, unmapped on destruction.
class MappedRegion {
 public:
  MappedRegion() = default;
  MappedRegion(MappedRegion&& other) noexcept;
  MappedRegion& operator=(MappedRegion&& other) noexcept;
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion();

  // Maps `path` PROT_READ, MAP_SHARED; kCopyOnWrite: PROT_READ |
  // PROT_WRITE, MAP_PRIVATE (writes stay in this process). Throws
  // Error(kInput) when the file cannot be opened or mapped. An empty file
  // gives an empty region.
  static MappedRegion map_file(const std::string& path, Access access = Access::kReadOnly);
  // The same for a file already open as `fd`, `size` bytes long (its stat);
  // `path` is for messages. The descriptor may be closed afterwards.
  static MappedRegion map_fd(int fd, uint64_t size, const std::string& path, Access access = Access::kReadOnly);
  // A second, read-only mapping of the pages that hold [data, data + size),
  // made with mremap (old size 0): the same physical pages, no copy, and the
  // caller's own mapping keeps its protection. Possible only where those
  // pages are one shared mapping (MAP_SHARED: a file, shared memory, Ray's
  // object store); elsewhere (private memory) the region is empty. The
  // region starts on the page that holds `data`.
  static MappedRegion alias_readonly(const void* data, size_t size);
  // A fresh anonymous mapping holding a copy of [data, data + size),
  // page-aligned, then made read-only unless kCopyOnWrite.
  static MappedRegion copy_of(const void* data, size_t size, Access access);

  const uint8_t* data() const { return static_cast<const uint8_t*>(base_); }
  uint8_t* mutable_data() const { return static_cast<uint8_t*>(base_); }
  size_t size() const { return size_; }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

// Whether every page of [data, data + size) is mapped without write
// permission in this process (/proc/self/maps).
bool mapped_readonly(const void* data, size_t size);

// Takes flock(LOCK_SH) on `fd`, the lock every process that maps a blob
// holds so that `zcwrap gc` (LOCK_EX, never waiting) leaves the file alone.
// A lock held exclusively by someone else is waited for up to 10 s (gc holds
// it for microseconds), then Error(kInput) naming `path`. A file system
// without flock support (ENOLCK, EOPNOTSUPP) is not an error: there is no
// gc to protect against there.
void lock_shared(int fd, const std::string& path);

// Writes a file next to its destination and renames it into place only when
// complete (after fsync of the file and its folder), so readers see the old
// file or the new one, never a part. The temporary is removed if the writer
// is destroyed before commit(). A symbolic link is followed: its target is
// replaced and the link kept. A destination that exists and is not a regular
// file (a character device such as /dev/null, a FIFO, a pipe behind
// /dev/stdout) cannot be replaced, and is written through instead.
class AtomicFile {
 public:
  // Throws Error(kWrite) when the folder cannot be written.
  explicit AtomicFile(std::string destination);
  // A file `name` in the folder open as `dir_fd` (at `dir_path`, for
  // messages), for a folder whose owner and mode the caller checked: the
  // temporary is created beside it relative to `dir_fd` (O_EXCL, never
  // following a link), with `mode`, and holds flock(LOCK_SH) from its
  // creation on, so `zcwrap gc` leaves it alone while it is written and, once
  // renamed to `name` (replacing whatever had that name, a link included,
  // without following it), for as long as take_fd()'s descriptor lives.
  AtomicFile(int dir_fd, std::string dir_path, std::string name, mode_t mode);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  // Throws Error(kWrite), naming the destination and strerror.
  void write(const void* data, size_t size);
  // Appends up to `size` bytes of the file open as `fd`, from `offset`,
  // copied inside the kernel (copy_file_range, as cp does: no pass through
  // this process's memory). Returns how many it copied: fewer, down to 0,
  // where the file systems or the destination do not allow it, and the
  // caller writes the rest. Throws Error(kWrite) on an I/O error.
  size_t copy_from(int fd, uint64_t offset, size_t size);
  void write_zeros(size_t size);
  // Skips `size` bytes, leaving a hole that reads as zeros and takes no room
  // on file systems with sparse files (tmpfs, ext4, xfs); zeros are written
  // into a destination that is not a regular file.
  void write_hole(size_t size);
  void commit();
  // For a file made in a folder: commit() unless a file of its name has
  // appeared since the caller looked (renameat2's RENAME_NOREPLACE; plain
  // rename where the file system lacks it). Returns false, committing
  // nothing, when one has: two processes that write the same content must
  // not rename one over the other, which would leave the first holding a
  // file no name leads to.
  bool commit_unless_present();
  // After commit() of a file made in a folder: the open, locked descriptor.
  [[nodiscard]] UniqueFd take_fd() { return std::move(fd_); }

  const std::string& destination() const { return destination_; }

 private:
  [[noreturn]] void fail(const std::string& what, int err) const;
  void wrote(size_t size);

  std::string destination_;
  std::string temp_path_;
  int dir_fd_ = -1;        // in-folder files: the folder (not owned)
  std::string name_;       // in-folder files: the destination's name in it
  std::string temp_name_;  // in-folder files: the temporary's name in it
  UniqueFd fd_;
  uint64_t written_ = 0;  // bytes written so far
  uint64_t flushed_ = 0;  // bytes whose write-back has been started
  bool through_ = false;  // writing into a non-regular destination in place
  bool holes_ = false;    // write_hole() was used
  bool committed_ = false;
};

std::string errno_text(int err);

// Opens `path` for reading and fills `st`; throws Error(kInput) unless it is
// a regular file (a FIFO, a device or a folder is refused at once, without
// waiting on it).
UniqueFd open_regular_file(const std::string& path, struct stat* st);

// "a FIFO", "a character device", ... for error messages.
const char* file_type_name(mode_t mode);

// Whole file as a string; throws Error(kInput) naming the path.
std::string read_file(const std::string& path);

// Creates `path` and any missing parents (mode 0755). Returns 0 or errno.
int make_dirs(const std::string& path);

// The folder part of a path ("." when there is none).
std::string parent_dir(const std::string& path);

// `path` made absolute against the current directory (no symlink resolution).
std::string absolute_path(const std::string& path);

}  // namespace zcwrap::detail
