#include "file_util.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "zcwrap/error.hpp"

namespace zcwrap::detail {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

MappedRegion::MappedRegion(MappedRegion&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

MappedRegion& MappedRegion::operator=(MappedRegion&& other) noexcept {
  if (this != &other) {
    if (base_ != nullptr) ::munmap(base_, size_);
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

MappedRegion::~MappedRegion() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

UniqueFd open_regular_file(const std::string& path, struct stat* st) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
  // before the type check below could refuse it.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) throw Error(ErrorCode::kInput, path + ": cannot open: " + errno_text(errno));
  if (::fstat(fd.get(), st) != 0) throw Error(ErrorCode::kInput, path + ": cannot stat: " + errno_text(errno));
  if (S_ISDIR(st->st_mode)) throw Error(ErrorCode::kInput, path + ": is a folder, not a file");
  if (!S_ISREG(st->st_mode)) {
    throw Error(ErrorCode::kInput, path + ": not a regular file (" + file_type_name(st->st_mode) +
                                       "); zcwrap reads inputs from regular files only");
  }
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) & ~O_NONBLOCK);
  return fd;
}

const char* file_type_name(mode_t mode) {
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "a regular file";
}

MappedRegion MappedRegion::map_file(const std::string& path, Access access) {
  struct stat st {};
  UniqueFd fd = open_regular_file(path, &st);
  return map_fd(fd.get(), static_cast<uint64_t>(st.st_size), path, access);
}

MappedRegion MappedRegion::map_fd(int fd, uint64_t size, const std::string& path, Access access) {
  MappedRegion region;
  if (size == 0) return region;
  void* base = access == Access::kCopyOnWrite ? ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
                             : ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) throw Error(ErrorCode::kInput, path + ": cannot map: " + errno_text(errno));
  region.base_ = base;
  region.size_ = static_cast<size_t>(size);
  return region;
}

MappedRegion MappedRegion::alias_readonly(const void* data, size_t size) {
  MappedRegion region;
  if (size == 0) return region;
  const auto page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(data) & ~(page - 1);
  const size_t length = (reinterpret_cast<uintptr_t>(data) + size - start + page - 1) & ~(page - 1);
  // Old size 0: a new mapping of the same pages, for shared mappings only
  // (EINVAL for private ones). It inherits their protection; drop PROT_WRITE.
  void* alias = ::mremap(reinterpret_cast<void*>(start), 0, length, MREMAP_MAYMOVE);
  if (alias == MAP_FAILED) return region;
  region.base_ = alias;
  region.size_ = length;
  if (::mprotect(alias, length, PROT_READ) != 0) return MappedRegion();
  return region;
}

MappedRegion MappedRegion::copy_of(const void* data, size_t size, Access access) {
  MappedRegion region;
  if (size == 0) return region;
  void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw Error(ErrorCode::kInput, "cannot allocate " + std::to_string(size) +
                                                             " bytes for a private copy of the blob: " +
                                                             errno_text(errno));
  region.base_ = base;
  region.size_ = size;
  std::memcpy(base, data, size);
  if (access == Access::kReadOnly) ::mprotect(base, size, PROT_READ);
  return region;
}

bool mapped_readonly(const void* data, size_t size) {
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + size;
  std::ifstream maps("/proc/self/maps");
  uintptr_t covered = begin;  // [begin, covered) is known to be read-only
  std::string line;
  while (covered < end && std::getline(maps, line)) {
    uintptr_t lo = 0, hi = 0;
    char perms[5] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %4s", &lo, &hi, perms) != 3) continue;
    if (lo <= covered && covered < hi) {
      if (perms[1] == 'w') return false;
      covered = hi;
    }
  }
  return covered >= end;
}

void lock_shared(int fd, const std::string& path) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) return;  // ENOLCK, EOPNOTSUPP: no locks here, and no gc either
    if (std::chrono::steady_clock::now() > deadline) {
      throw Error(ErrorCode::kInput, path + ": locked exclusively by another process for over 10 s "
                                            "(flock); zcwrap gc holds that lock only while it removes a file");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

AtomicFile::AtomicFile(int dir_fd, std::string dir_path, std::string name, mode_t mode)
    : destination_(dir_path + "/" + name), dir_fd_(dir_fd), name_(std::move(name)) {
  static thread_local std::mt19937_64 random{std::random_device{}()};
  for (int attempt = 0; attempt < 100; ++attempt) {
    char suffix[16];
    std::snprintf(suffix, sizeof(suffix), "%06llx", static_cast<unsigned long long>(random() & 0xffffff));
    temp_name_ = name_ + ".tmp-" + suffix;
    UniqueFd fd(::openat(dir_fd_, temp_name_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (!fd.valid()) {
      if (errno == EEXIST) continue;
      fail("cannot create a file in " + dir_path, errno);
    }
    // gc may have locked and removed the file between its creation and this
    // lock: then the name no longer leads to it, and another name is tried.
    lock_shared(fd.get(), destination_);
    struct stat mine {}, named {};
    if (::fstat(fd.get(), &mine) != 0 ||
        ::fstatat(dir_fd_, temp_name_.c_str(), &named, AT_SYMLINK_NOFOLLOW) != 0 || mine.st_ino != named.st_ino ||
        mine.st_dev != named.st_dev) {
      continue;
    }
    ::fchmod(fd.get(), mode);  // exactly `mode`, whatever the umask
    fd_ = std::move(fd);
    return;
  }
  fail("cannot create a temporary file in " + dir_path + " (100 names tried)", EEXIST);
}

AtomicFile::AtomicFile(std::string destination) : destination_(std::move(destination)) {
  // A symbolic link: its target is what the user names, and is replaced (or
  // written through, below); the link stays. A dangling link's target is
  // created where the link points.
  struct stat st {};
  if (::lstat(destination_.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    char resolved[PATH_MAX];
    if (::realpath(destination_.c_str(), resolved) != nullptr) {
      destination_ = resolved;
    } else {
      const ssize_t n = ::readlink(destination_.c_str(), resolved, sizeof(resolved) - 1);
      if (n > 0) {
        const std::string target(resolved, static_cast<size_t>(n));
        destination_ = target[0] == '/' ? target : parent_dir(destination_) + "/" + target;
      }
    }
  }
  if (::stat(destination_.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) fail("is a folder; name a file to write", EISDIR);
    if (S_ISSOCK(st.st_mode)) fail("is a socket, which cannot be written as a file; name a file, device or FIFO", ENXIO);
    if (!S_ISREG(st.st_mode)) {
      // A device or FIFO (/dev/null, a pipe behind /dev/stdout): it
      // cannot be replaced, so it is written in place, as `cp` would.
      fd_ = UniqueFd(::open(destination_.c_str(), O_WRONLY | O_CLOEXEC));
      if (!fd_.valid()) fail("cannot open for writing", errno);
      through_ = true;
      return;
    }
  }
  std::vector<char> name(destination_.begin(), destination_.end());
  const char suffix[] = ".tmp-XXXXXX";
  name.insert(name.end(), suffix, suffix + sizeof(suffix));
  int fd = ::mkstemp(name.data());
  if (fd < 0) fail("cannot create a file in " + parent_dir(destination_), errno);
  fd_ = UniqueFd(fd);
  temp_path_ = name.data();
  ::fchmod(fd, 0644);
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  if (dir_fd_ >= 0 && !temp_name_.empty()) ::unlinkat(dir_fd_, temp_name_.c_str(), 0);
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::fail(const std::string& what, int err) const {
  std::string message = destination_ + ": " + what + ": " + errno_text(err);
  throw Error(ErrorCode::kWrite, message);
}

void AtomicFile::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_.get(), p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write failed", errno);
    }
    p += n;
    size -= static_cast<size_t>(n);
    wrote(static_cast<size_t>(n));
  }
}

size_t AtomicFile::copy_from(int fd, uint64_t offset, size_t size) {
  auto from = static_cast<loff_t>(offset);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::copy_file_range(fd, &from, fd_.get(), nullptr, size - done, 0);
    if (n < 0 && errno == EINTR) continue;
    // Not between these files (EXDEV, EINVAL: another file system, a pipe),
    // not on this kernel (ENOSYS, EOPNOTSUPP), or the source is shorter than
    // the manifest says (0): the caller writes the rest from memory.
    if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP || errno == EBADF)) break;
    if (n < 0) fail("write failed", errno);
    if (n == 0) break;
    done += static_cast<size_t>(n);
    wrote(static_cast<size_t>(n));
  }
  return done;
}

void AtomicFile::wrote(size_t size) {
  written_ += size;
  // Start writing back what is complete, so that the disk works while the
  // rest is produced and commit()'s fsync waits only for the tail; like
  // `cp` + `sync` this leaves the pages cached, for the workers that map
  // the blob next. Advisory: where unsupported the fsync does it all.
  constexpr uint64_t kWriteBehind = 32ull << 20;
  if (!through_ && written_ - flushed_ >= kWriteBehind) {
    ::sync_file_range(fd_.get(), static_cast<off_t>(flushed_), static_cast<off_t>(written_ - flushed_),
                      SYNC_FILE_RANGE_WRITE);
    flushed_ = written_;
  }
}

void AtomicFile::write_zeros(size_t size) {
  static const char zeros[4096] = {};
  while (size > 0) {
    size_t n = size < sizeof(zeros) ? size : sizeof(zeros);
    write(zeros, n);
    size -= n;
  }
}

void AtomicFile::write_hole(size_t size) {
  if (through_) {
    write_zeros(size);
    return;
  }
  if (::lseek(fd_.get(), static_cast<off_t>(size), SEEK_CUR) < 0) fail("seek failed", errno);
  written_ += size;
  holes_ = true;
}

bool AtomicFile::commit_unless_present() {
  if (dir_fd_ < 0 || through_) {
    commit();
    return true;
  }
  if (holes_ && ::ftruncate(fd_.get(), static_cast<off_t>(written_)) != 0) fail("cannot set the file's size", errno);
  if (::fsync(fd_.get()) != 0) fail("fsync failed", errno);
  if (::renameat2(dir_fd_, temp_name_.c_str(), dir_fd_, name_.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) return false;
    if (errno != EINVAL && errno != ENOSYS) fail("cannot rename into place", errno);
    if (::renameat(dir_fd_, temp_name_.c_str(), dir_fd_, name_.c_str()) != 0) fail("cannot rename into place", errno);
  }
  committed_ = true;
  ::fsync(dir_fd_);
  return true;
}

void AtomicFile::commit() {
  // A file that ends in a hole is only as long as its last write: extend it.
  if (holes_ && ::ftruncate(fd_.get(), static_cast<off_t>(written_)) != 0) fail("cannot set the file's size", errno);
  if (through_) {
    committed_ = true;
    if (::close(fd_.release()) != 0) fail("close failed", errno);
    return;
  }
  if (::fsync(fd_.get()) != 0) fail("fsync failed", errno);
  if (dir_fd_ >= 0) {
    // renameat replaces a link of that name itself, never its target. The
    // descriptor stays open: its lock now covers the destination.
    if (::renameat(dir_fd_, temp_name_.c_str(), dir_fd_, name_.c_str()) != 0) fail("cannot rename into place", errno);
    committed_ = true;
    ::fsync(dir_fd_);
    return;
  }
  UniqueFd closing(fd_.release());
  if (::close(closing.release()) != 0) fail("close failed", errno);
  if (::rename(temp_path_.c_str(), destination_.c_str()) != 0) fail("cannot rename into place", errno);
  committed_ = true;
  // The rename is durable only once the folder's entry is on disk.
  UniqueFd dir(::open(parent_dir(destination_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.valid()) ::fsync(dir.get());
}

std::string errno_text(int err) { return std::strerror(err); }

std::string read_file(const std::string& path) {
  struct stat st {};
  UniqueFd fd = open_regular_file(path, &st);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw Error(ErrorCode::kInput, path + ": cannot read: " + errno_text(errno));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

int make_dirs(const std::string& path) {
  if (path.empty() || path == "/" || path == ".") return 0;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
  int parent = make_dirs(parent_dir(path));
  if (parent != 0) return parent;
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return errno;
  return 0;
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string absolute_path(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (::getcwd(cwd, sizeof(cwd)) == nullptr) return path;
  std::string dir(cwd);
  std::string rest = path;
  while (rest.rfind("./", 0) == 0) rest = rest.substr(2);
  return dir == "/" ? "/" + rest : dir + "/" + rest;
}

}  // namespace zcwrap::detail
