// The store: the folder where in-process packs (from_model, the Python
// package) put their blobs, named by content so a model is stored once.
// Internal.
#pragma once

#include <string>

#include "pack.hpp"

namespace zcwrap::detail {

// options.store_dir, else $ZCWRAP_STORE, else /dev/shm/zcwrap.
std::string store_dir(const PackOptions& options);

// Writes `blob` into the store as <meta checksum>.zcb unless a valid blob of
// that name and checksum is there already; returns its absolute path.
// Throws Error(kWrite) naming ZCWRAP_STORE when the folder cannot be made or
// has no room.
std::string store_blob(const PreparedBlob& blob, const PackOptions& options);

}  // namespace zcwrap::detail
