// Unwrap: a checked blob's storages placed on a device, bound to their
// tensors, and the skeletons rebuilt around them. Internal; includes LibTorch.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <torch/script.h>

#include "blob_file.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace zcwrap {

// What an unwrap produced, behind the public Unwrapped handle.
struct Unwrapped::State {
  std::shared_ptr<const detail::BlobFile> blob;
  std::vector<std::string> names;
  std::vector<format::SkeletonKind> kinds;         // each model's skeleton kind
  std::vector<torch::jit::Module> modules;         // "torchscript" models; empty Module for others
  std::vector<std::vector<at::Tensor>> tensors;    // "python_pickle" models: bound tensors, manifest order
  bool standalone = false;
  std::string device;
  std::vector<std::string> warnings;
};

namespace detail {

// Error(kBadModel) for model `model` of the blob at `blob`: an eager module,
// which only the Python package rebuilds (and unpack cannot write back).
Error needs_python(const std::string& blob, const std::string& model);

// Model `index`'s tensors, in manifest order, each bound to its storage with
// the manifest's dtype, quantizer, sizes, strides and offset. With
// `as_saved`, requires_grad as packed; otherwise false.
std::vector<at::Tensor> bind_tensors(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                     const c10::Device& device, bool as_saved = false);

// Loads TorchScript model `index`'s skeleton and binds its tensors. For
// unwrap: eval mode. `as_saved` (for unpack) keeps the training flag and
// requires_grad as packed. Throws Error(kBadBlob) for another skeleton kind.
torch::jit::Module rebuild_model(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                                 const c10::Device& device, bool as_saved = false);

// The whole unwrap of an opened blob: verify (when asked), prefetch, place,
// rebuild. With `bind_only_pickles`, "python_pickle" models get their bound
// tensors (the Python package unpickles them); without, such a model is an
// Error(kBadModel) saying it needs Python.
std::shared_ptr<Unwrapped::State> unwrap_blob(const std::shared_ptr<const BlobFile>& blob,
                                              const UnwrapOptions& options, bool bind_only_pickles = false);

}  // namespace detail
}  // namespace zcwrap
