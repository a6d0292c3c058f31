// The store: the folder where from_model (and the Python package) put the
// blobs they pack, one file per content, and gc, which empties it of what no
// process uses any more.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace zcwrap {

/// The store folder `requested` names: itself when not empty, else
/// $ZCWRAP_STORE, else /dev/shm/zcwrap-<uid>, a folder of the calling user's
/// own. Whichever it is, every use checks it is a folder (not a symbolic
/// link) owned by the effective user and writable by no one else, and
/// refuses it otherwise (Error(kWrite)): whoever can write the store can
/// choose the weights, and the code, that workers load.
std::string store_folder(const std::string& requested = "");

/// A file (or kernel folder) of the store that gc removed, or would remove on a dry run.
struct StoreFile {
  std::string path;
  uint64_t bytes = 0;
  bool temporary = false;  ///< a pack's unfinished file (a pack killed while writing), not a blob
};

struct GcOptions {
  std::string store_dir;  ///< empty: store_folder()'s choice
  bool dry_run = false;   ///< report what would go, remove nothing
};

/// Removes from the store every blob that no live process maps or holds,
/// every temporary file that no live pack is writing, and the compiled code
/// AOTInductor models placed there (<digest>.so, and a CUDA model's kernel
/// folder <digest>.kernels, its files summed in `bytes`) once no process
/// uses it. Each process that
/// maps a blob (unwrap, open, from_actor), holds one (a wrapper from
/// from_model, as long as it or a copy lives) or writes one holds
/// flock(LOCK_SH) on it; gc takes LOCK_EX without waiting and removes only
/// what it got, so it never races a process that is opening or packing the
/// same blob (the packer checks that the name still leads to the file it
/// locked). Files with other names, and links, are left alone, except a
/// link planted under a blob's name, which is removed without being
/// followed. A store folder that does not exist holds nothing: an empty
/// list. Throws Error(kWrite) for a folder that fails store_folder's checks.
std::vector<StoreFile> gc(const GcOptions& options = {});

}  // namespace zcwrap
