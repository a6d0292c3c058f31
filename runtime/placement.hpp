// Placement: a blob's storages on a device. On the CPU, views of the blob's
// bytes; elsewhere one copy per storage; with use_fast_load on CUDA, views of
// one device allocation streamed through pinned buffers (fast_load.hpp, with
// the CUDA side in cuda_loader.cpp, or cuda_loader_stub.cpp without -Dcuda).
// The one interface unwrap and benchmarks/fast_load_bench.cpp use. Internal.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>
#include <c10/core/Storage.h>

#include "blob_file.hpp"
#include "fast_load.hpp"
#include "format.hpp"

namespace zcwrap::detail {

// Loads LibTorch's CUDA backend (libtorch_cuda.so, whose static
// initializers register the CUDA kernels and hooks) the first time it is
// called, so that a process that stays on the CPU never maps it: with the pip
// torch 2.14 that is 0.15 s of start-up and about 270 MiB of RSS (130 MiB of
// it private) per process. True once it is loaded, also when something else
// (Python's torch) loaded it first; false for a CPU-only LibTorch, with
// `why` (may be null) set to the loader's message. Thread-safe.
bool load_cuda_backend(std::string* why = nullptr);

// "cpu", "cuda", "cuda:1" as a device this process has (loading the CUDA
// backend for a CUDA one). Throws Error(kDevice) naming what is missing.
c10::Device parse_device(const std::string& device);

// One c10::Storage per blob storage: on the CPU a view of the blob's bytes
// whose deleter keeps the blob alive; elsewhere one copy per storage, or
// with `use_fast_load` on CUDA views of one device buffer.
std::vector<c10::Storage> make_storages(const std::shared_ptr<const BlobFile>& blob, const c10::Device& device,
                                        bool use_fast_load = false);

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
