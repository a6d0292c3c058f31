// What a process holds in memory, from /proc (Linux), and whether a file's
// pages are in the page cache. Used by `zcwrap bench`; torch-free.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace zcwrap::cli {

/// Memory fields of /proc/PID/smaps_rollup (or of some entries of
/// /proc/PID/smaps), in bytes. A field the kernel did not print is 0.
struct MemoryUsage {
  uint64_t rss = 0;
  uint64_t pss = 0;
  uint64_t shared_clean = 0;
  uint64_t shared_dirty = 0;
  uint64_t private_clean = 0;
  uint64_t private_dirty = 0;
  uint64_t swap = 0;
  /// File pages mapped by PMD (huge pages); only some kernels print it.
  uint64_t file_pmd_mapped = 0;

  uint64_t private_bytes() const { return private_clean + private_dirty; }
  uint64_t shared_bytes() const { return shared_clean + shared_dirty; }
};

/// A file as the kernel names it in /proc/PID/smaps: device and inode.
struct FileId {
  unsigned major_number = 0;
  unsigned minor_number = 0;
  uint64_t inode = 0;

  bool operator==(const FileId& other) const {
    return major_number == other.major_number && minor_number == other.minor_number && inode == other.inode;
  }
};

/// The FileId of `path` (stat). Throws Error(kInput) naming the path.
FileId file_id(const std::string& path);

/// Sums the fields of smaps-format text (smaps_rollup, or smaps): each entry
/// is a header line "start-end perms offset major:minor inode [path]"
/// followed by "Field:   N kB" lines. With `only`, just the entries that map
/// that file (matched by device and inode, since the path the kernel prints
/// may differ from ours: symlinks, bind mounts, " (deleted)"). Fields this
/// does not use are skipped. Throws Error(kInternal) naming `source` for a
/// field it uses whose value is not "N kB", and, without `only`, when the
/// text has no Rss or Pss line (not smaps, or a kernel without them).
MemoryUsage parse_smaps(const std::string& text, const std::string& source, const FileId* only = nullptr);

/// /proc/PID/smaps_rollup, parsed. Throws Error(kInternal) when it cannot be
/// read (the process is gone, or Linux older than 4.14).
MemoryUsage read_smaps_rollup(pid_t pid);

/// The entries of /proc/PID/smaps that map `file`, summed (all zero when the
/// process does not map it). Throws Error(kInternal) when it cannot be read.
MemoryUsage read_file_mapping(pid_t pid, const FileId& file);

/// Bytes of `path` resident in the page cache (mincore over a mapping of
/// it), and its size. Throws Error(kInput) when it cannot be opened.
struct Residency {
  uint64_t resident = 0;
  uint64_t size = 0;
  double fraction() const { return size == 0 ? 0.0 : static_cast<double>(resident) / static_cast<double>(size); }
};
Residency page_cache_residency(const std::string& path);

/// Asks the kernel to drop `path`'s clean pages from the page cache
/// (posix_fadvise POSIX_FADV_DONTNEED, after fdatasync so no page is dirty).
/// Unprivileged; it cannot drop pages a process still maps, nor pages of
/// tmpfs (/dev/shm), which have no backing file to reread. Returns the
/// residency afterwards; throws Error(kInput) when the file cannot be opened.
Residency evict_from_page_cache(const std::string& path);

}  // namespace zcwrap::cli
