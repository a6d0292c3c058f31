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

// A read-only, shared mapping of a whole file, unmapped on destruction.
class MappedRegion {
 public:
  MappedRegion() = default;
  MappedRegion(MappedRegion&& other) noexcept;
  MappedRegion& operator=(MappedRegion&& other) noexcept;
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion();

  // Maps `path` PROT_READ, MAP_SHARED; with `copy_on_write`, PROT_READ |
  // PROT_WRITE, MAP_PRIVATE (writes stay in this process). Throws
  // Error(kInput) when the file cannot be opened or mapped. An empty file
  // gives an empty region.
  static MappedRegion map_file(const std::string& path, bool copy_on_write = false);
  // The same for a file already open as `fd`, `size` bytes long (its stat);
  // `path` is for messages. The descriptor may be closed afterwards.
  static MappedRegion map_fd(int fd, uint64_t size, const std::string& path, bool copy_on_write = false);

  const uint8_t* data() const { return static_cast<const uint8_t*>(base_); }
  uint8_t* mutable_data() const { return static_cast<uint8_t*>(base_); }
  size_t size() const { return size_; }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

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
  void commit();

  const std::string& destination() const { return destination_; }

 private:
  [[noreturn]] void fail(const std::string& what, int err) const;
  void wrote(size_t size);

  std::string destination_;
  std::string temp_path_;
  UniqueFd fd_;
  uint64_t written_ = 0;  // bytes written so far
  uint64_t flushed_ = 0;  // bytes whose write-back has been started
  bool through_ = false;  // writing into a non-regular destination in place
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

// Whether the file at `path` begins with `size` bytes equal to `prefix`.
// Throws Error(kInput) when it cannot be opened.
bool starts_with_bytes(const std::string& path, const char* prefix, size_t size);

// Creates `path` and any missing parents (mode 0755). Returns 0 or errno.
int make_dirs(const std::string& path);

// The folder part of a path ("." when there is none).
std::string parent_dir(const std::string& path);

// `path` made absolute against the current directory (no symlink resolution).
std::string absolute_path(const std::string& path);

}  // namespace zcwrap::detail
