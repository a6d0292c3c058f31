#include "proc_memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "zcwrap/error.hpp"
#include "file_util.hpp"

namespace zcwrap::cli {
namespace {

// The field a "Key:" line adds to, or nullptr for one this does not use.
uint64_t* field_of(MemoryUsage& m, const std::string& key) {
  if (key == "Rss:") return &m.rss;
  if (key == "Pss:") return &m.pss;
  if (key == "Shared_Clean:") return &m.shared_clean;
  if (key == "Shared_Dirty:") return &m.shared_dirty;
  if (key == "Private_Clean:") return &m.private_clean;
  if (key == "Private_Dirty:") return &m.private_dirty;
  if (key == "Swap:") return &m.swap;
  if (key == "FilePmdMapped:") return &m.file_pmd_mapped;
  return nullptr;
}

std::string read_proc_file(const std::string& path) {
  // /proc files report size 0, so read until EOF rather than by st_size.
  std::ifstream in(path);
  if (!in) {
    throw Error(ErrorCode::kInternal, path + ": cannot read: " + detail::errno_text(errno) +
                                          (path.find("smaps_rollup") != std::string::npos
                                               ? " (the process is gone, or Linux is older than 4.14)"
                                               : " (the process is gone)"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// An open file and its size, for the page cache helpers.
struct OpenFile {
  detail::UniqueFd fd;
  uint64_t size = 0;
};

OpenFile open_for_cache(const std::string& path) {
  OpenFile f;
  f.fd = detail::UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!f.fd.valid()) throw Error(ErrorCode::kInput, path + ": cannot open: " + detail::errno_text(errno));
  struct stat st {};
  if (::fstat(f.fd.get(), &st) != 0) throw Error(ErrorCode::kInput, path + ": fstat: " + detail::errno_text(errno));
  f.size = static_cast<uint64_t>(st.st_size);
  return f;
}

Residency residency_of(const OpenFile& f, const std::string& path) {
  Residency r;
  r.size = f.size;
  if (f.size == 0) return r;
  // Mapping a file does not read it; mincore then reports which of its
  // pages the page cache holds.
  void* base = ::mmap(nullptr, f.size, PROT_READ, MAP_SHARED, f.fd.get(), 0);
  if (base == MAP_FAILED) throw Error(ErrorCode::kInput, path + ": mmap: " + detail::errno_text(errno));
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> pages((f.size + page - 1) / page);
  const int rc = ::mincore(base, f.size, pages.data());
  const int err = errno;
  ::munmap(base, f.size);
  if (rc != 0) throw Error(ErrorCode::kInput, path + ": mincore: " + detail::errno_text(err));
  for (size_t i = 0; i < pages.size(); ++i) {
    if (pages[i] & 1) r.resident += (i + 1 == pages.size()) ? f.size - i * page : page;
  }
  return r;
}

}  // namespace

FileId file_id(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(ErrorCode::kInput, path + ": stat: " + detail::errno_text(errno));
  return {major(st.st_dev), minor(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

MemoryUsage parse_smaps(const std::string& text, const std::string& source, const FileId* only) {
  MemoryUsage m;
  bool counting = only == nullptr;
  bool saw_rss = false, saw_pss = false;
  std::istringstream lines(text);
  std::string line;
  size_t number = 0;
  while (std::getline(lines, line)) {
    ++number;
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key.empty()) continue;
    if (key.back() != ':') {
      // An entry's header: "start-end perms offset major:minor inode [path]".
      if (only == nullptr) continue;
      std::string perms, offset, device;
      uint64_t inode = 0;
      fields >> perms >> offset >> device >> inode;
      FileId id;
      // The kernel prints the device as hex major:minor.
      counting = std::sscanf(device.c_str(), "%x:%x", &id.major_number, &id.minor_number) == 2;
      id.inode = inode;
      counting = counting && fields && id == *only;
      continue;
    }
    uint64_t* field = field_of(m, key);
    if (field == nullptr) continue;
    saw_rss |= key == "Rss:";
    saw_pss |= key == "Pss:";
    if (!counting) continue;
    uint64_t value = 0;
    std::string unit, extra;
    if (!(fields >> value >> unit) || unit != "kB" || (fields >> extra)) {
      throw Error(ErrorCode::kInternal, source + ": line " + std::to_string(number) + ": expected '" + key +
                                            " N kB', got '" + line + "'");
    }
    *field += value * 1024;
  }
  if (only == nullptr && !(saw_rss && saw_pss)) {
    throw Error(ErrorCode::kInternal, source + ": no " + std::string(saw_rss ? "Pss" : "Rss") +
                                          " line; is this smaps text from Linux 4.14 or later?");
  }
  return m;
}

MemoryUsage read_smaps_rollup(pid_t pid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/smaps_rollup";
  return parse_smaps(read_proc_file(path), path);
}

MemoryUsage read_file_mapping(pid_t pid, const FileId& file) {
  const std::string path = "/proc/" + std::to_string(pid) + "/smaps";
  return parse_smaps(read_proc_file(path), path, &file);
}

Residency page_cache_residency(const std::string& path) {
  const OpenFile f = open_for_cache(path);
  return residency_of(f, path);
}

Residency evict_from_page_cache(const std::string& path) {
  const OpenFile f = open_for_cache(path);
  // DONTNEED drops clean pages only; written-back pages are clean. A file
  // opened read-only can still be fdatasync'ed.
  ::fdatasync(f.fd.get());
  const int rc = ::posix_fadvise(f.fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  if (rc != 0) throw Error(ErrorCode::kInput, path + ": posix_fadvise(DONTNEED): " + detail::errno_text(rc));
  return residency_of(f, path);
}

}  // namespace zcwrap::cli
