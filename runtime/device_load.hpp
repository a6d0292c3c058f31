// Placing a blob's storages on a device as views of one allocation: what
// unwrap(device, use_fast_load = true) builds. Internal.
#pragma once

#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/Storage.h>

#include "blob_file.hpp"
#include "fast_load.hpp"
#include "zcwrap/internal/format.hpp"

namespace zcwrap::detail {

// One Storage per manifest storage, each a view of `owner` at the storage's
// offset with its byte size, on owner's device. Every view holds a reference
// to `owner`, so the allocation lives until the last view (and every tensor
// made from it) is gone; tensors set on the same view alias as they did when
// packed. Throws Error(kBadBlob) naming `path` when a storage does not fit
// inside `owner`.
std::vector<c10::Storage> storage_views(const c10::Storage& owner,
                                        const std::vector<format::StorageEntry>& storages,
                                        const std::string& path);

// Whether this build has the CUDA loader (meson -Dcuda, runtime/cuda_loader.cpp).
bool fast_load_built();

// The fast path: one allocation on `device` (a CUDA device; "cuda" means the
// current one) for the whole data section, streamed from the mapping through
// pinned staging buffers (fast_load.hpp), then storage_views() of it. Blocks
// until the bytes are on the device. Throws Error(kDevice) naming the blob
// when the device has no room or a CUDA call fails, and when this build has
// no CUDA loader.
std::vector<c10::Storage> fast_load_storages(const BlobFile& blob, const c10::Device& device,
                                             const FastLoadOptions& options = {});

}  // namespace zcwrap::detail
