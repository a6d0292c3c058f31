// The store: the folder where in-process packs (from_model, the Python
// package) put their blobs, named by content so a model is stored once.
// store_folder() and gc() are public (zcwrap/store.hpp). Internal.
#pragma once

#include <memory>
#include <string>

#include "file_util.hpp"
#include "pack.hpp"
#include "zcwrap/store.hpp"

namespace zcwrap::detail {

// A store folder, open, checked, and named by its absolute path.
struct StoreFolder {
  std::string path;
  UniqueFd fd;  // every file in it is opened relative to this, never following a link
};

// Opens the store folder at `path` and checks it (see store_folder()):
// Error(kWrite), one line saying which check failed. With `create`, a missing
// folder is made first (mode 0700; missing parents 0755).
StoreFolder open_store(const std::string& path, bool create);

struct StoredBlob {
  std::string path;                  // absolute
  std::shared_ptr<const void> lock;  // its descriptor, holding flock(LOCK_SH)
};

// Writes `blob` into the store as <meta checksum>.zcb unless a file of that
// name already holds exactly its bytes; either way returns the file locked.
// Throws Error(kWrite) for a store that fails its checks, cannot be written
// or has no room.
StoredBlob store_blob(const PreparedBlob& blob, const PackOptions& options);

}  // namespace zcwrap::detail
