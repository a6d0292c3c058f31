// Rebinding: a blob's tensors made over their placed storages, and a
// TorchScript skeleton rebuilt around them. Internal; includes LibTorch.
#pragma once

#include <string>
#include <vector>

#include <torch/script.h>

#include "blob_file.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::detail {

// What a bound tensor's requires_grad (and a module's training flag) are:
// off, as unwrap gives them, or as packed, for unpack to write back.
enum class Flags { kInference, kAsPacked };

// Error(kBadModel) for model `model` of the blob at `blob`: a kind only the
// Python package rebuilds (an eager module, an ExportedProgram), which C++
// can neither unwrap nor unpack.
Error needs_python(const BlobFile& blob, size_t model);

// Model `index`'s tensors, in manifest order, each bound to its storage with
// the manifest's dtype, quantizer, sizes, strides and offset.
std::vector<at::Tensor> bind_tensors(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                     const c10::Device& device, Flags flags = Flags::kInference);

// Loads TorchScript model `index`'s skeleton and binds its tensors (which
// `bound`, when given, receives in manifest order). kInference: eval mode.
// Throws Error(kBadBlob) when skeleton and manifest disagree.
torch::jit::Module rebuild_module(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                  const c10::Device& device, Flags flags = Flags::kInference,
                                  std::vector<at::Tensor>* bound = nullptr);

}  // namespace zcwrap::detail
