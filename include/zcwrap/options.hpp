// The options of packing and unwrapping, and what a caller hands over: plain
// structs and enums, with no LibTorch and nothing of the library's inside,
// so that internal headers can take them without the wrapper's API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <iterator>
#include <string>
#include <string_view>

namespace zcwrap {

/// What a blob holds: one model on its own (is_standalone_module() is true,
/// as for from_model), or a pipeline of named models.
enum class Layout { kStandalone, kPipeline };

/// How to pack. The defaults suit almost everyone.
struct PackOptions {
  /// Alignment of every storage in the data section: a power of two from 64
  /// to 2 MiB. 2 MiB lets the kernel back the weights with huge pages.
  uint64_t alignment = 4096;
  /// from_model/from_pipeline only: the folder that holds in-process packed
  /// blobs. Empty means $ZCWRAP_STORE, or /dev/shm/zcwrap-<uid> when that is
  /// unset. It must be a folder of the caller's own that no one else can
  /// write (see store_folder() in zcwrap/store.hpp); a missing one is made
  /// with mode 0700.
  std::string store_dir;
  /// from_model/from_pipeline only: the permission bits of a blob written to
  /// the store. Readable by its owner only unless asked (0640 lets the
  /// folder's group map it, if the folder lets them in).
  uint32_t store_file_mode = 0600;
  /// Name of a standalone model (pack_files with Layout::kStandalone, from_model).
  std::string standalone_name = "model";
  /// Called from the packing thread as the data section is written: bytes
  /// written so far and in all (at least once, at the end). Empty: no calls.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

/// How to warm the weights' pages at unwrap (cold start).
enum class Prefetch {
  kNone,      ///< pages fault in on first use (the default)
  kWillNeed,  ///< madvise(MADV_WILLNEED): the kernel starts reading ahead; unwrap does not wait
  kPopulate,  ///< read every page of the data section before unwrap returns
  kLock,      ///< kPopulate, then mlock() the data section; if RLIMIT_MEMLOCK is too low this is a
              ///< warning (Unwrapped::warnings()), not an error
};

/// The names of the Prefetch modes, in enum order: what `zcwrap --prefetch`
/// and the Python package's prefetch= take.
inline constexpr std::string_view kPrefetchNames[] = {"none", "willneed", "populate", "lock"};
static_assert(std::size(kPrefetchNames) == static_cast<size_t>(Prefetch::kLock) + 1, "one name per Prefetch");
/// The mode named `name`. Throws Error(kUsage) listing the names for another.
Prefetch parse_prefetch(std::string_view name);
/// The name of `mode`.
inline std::string_view prefetch_name(Prefetch mode) { return kPrefetchNames[static_cast<size_t>(mode)]; }

/// How to unwrap. unwrap(device, use_fast_load) is unwrap({device, use_fast_load}).
struct UnwrapOptions {
  std::string device = "cpu";
  /// CUDA only: one device allocation streamed through pinned buffers (see
  /// ModelWrapper::unwrap). Ignored on "cpu", already zero-copy.
  bool use_fast_load = false;
  /// Check every storage's XXH3 checksum before building the modules (all
  /// cores). Also on when the environment has ZCWRAP_VERIFY=1.
  bool verify = false;
  /// Map the blob MAP_PRIVATE and writable: a tensor written in place gets a
  /// private copy of that page in this process only. Off by default, when a
  /// write to a weight faults (SIGSEGV). Either way the blob and other
  /// workers keep the original values. A memory blob (from_memory) has no
  /// file to map privately: it is copied whole into private, writable memory.
  bool copy_on_write = false;
  Prefetch prefetch = Prefetch::kNone;
};

/// A whole blob in memory that the caller owns: a shared-memory segment, a
/// Ray object-store buffer, a file mapped by the host. `owner` is kept alive
/// as long as any tensor unwrapped from it, and is released (on whichever
/// thread drops the last tensor) after that. The memory must stay unchanged
/// and readable that long, and `data` must be 64-byte aligned.
///
/// The weights are read-only, as a file's are, without changing the
/// protection of the caller's memory: shared memory (MAP_SHARED, such as
/// Ray's object store, which maps it writable) is mapped a second time,
/// read-only, and tensors point into that mapping of the same pages (no
/// copy); memory that is already read-only is used as it is; private,
/// writable memory (a heap buffer) is copied once into a read-only mapping.
/// A write to a weight then faults (SIGSEGV) in this process only.
struct MemoryBlob {
  const void* data = nullptr;
  size_t size = 0;
  std::shared_ptr<const void> owner;  ///< may be empty when the memory outlives every tensor
  std::string name = "memory blob";   ///< stands for a path in error messages
};

/// One model file of a pipeline to pack.
struct ModelFile {
  std::string name;  ///< [A-Za-z0-9_.-]+, unique within the blob
  std::string path;  ///< a TorchScript archive (torch.jit.save / Module::save)
};

}  // namespace zcwrap
