// The packer: turns loaded TorchScript modules into a blob. Internal.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <torch/script.h>

#include "file_util.hpp"
#include "format.hpp"
#include "zcwrap/options.hpp"

namespace zcwrap::detail {

// One tensor of an eager (Python) module, in the order its pickle names it.
struct EagerTensor {
  std::string path;  // "layer1.0.conv1.weight", or "tensor[7]" for one no attribute names
  format::TensorKind kind = format::TensorKind::kAttribute;
  at::Tensor tensor;  // on the CPU
};

// An eager module as the Python package hands it over: its pickle, in which
// persistent id N stands for tensors[N], and those tensors.
struct EagerModel {
  std::string pickle;
  std::vector<EagerTensor> tensors;
  uint64_t unshared_bytes = 0;  // of tensors left inside the pickle
};

struct PackInput {
  std::string name;
  std::string origin;  // the file it came from, for messages
  torch::jit::Module module;
  torch::jit::ExtraFilesMap extra_files;
  std::optional<EagerModel> eager;  // set: an eager module, and `module` is unused
};

// A copy of `model` that the packer may change: saved and reloaded, so the
// caller's module and its tensors are never touched, even transiently.
// Throws Error(kBadModel) when it cannot be serialized.
PackInput copy_module(const std::string& name, const torch::jit::Module& model);

// Everything about a blob but its bytes on disk: header, manifest,
// compressed skeletons, and the storages to copy (kept alive here).
struct PreparedBlob {
  format::Header header;
  std::string manifest;
  std::string skeletons;
  std::vector<c10::Storage> storages;  // same order as the manifest's
  std::vector<format::StorageEntry> entries;
  std::vector<std::string> names;
  bool standalone = false;
  uint64_t unshared_bytes = 0;  // tensor bytes left in the skeletons, all models
};

// Loads a TorchScript file for packing, with its extra files. Throws
// Error(kInput) when unreadable, Error(kBadModel) with a hint for an eager
// torch.save pickle or anything else that is not TorchScript.
// With `mapped`, tensors point into a read-only mapping of the file where
// possible (mapped_load.hpp) instead of being read into memory.
PackInput load_model_file(const std::string& name, const std::string& path, bool mapped = false);

// Moves every shareable tensor of `models` into the data-section plan and
// replaces it with an empty placeholder: the modules are changed, so pass
// modules the caller owns. Throws Error(kUsage) for bad names or alignment.
// `pipeline_pickle`: the pickle of a Python pipeline object's other
// attributes, stored as the manifest's "pipeline_object" (pipelines only).
PreparedBlob prepare_blob(std::vector<PackInput>& models, bool standalone,
                          const PackOptions& options,
                          const std::optional<std::string>& pipeline_pickle = std::nullopt);

// Writes the blob atomically to `path`, reporting the data section's bytes
// to `progress` when set. Throws Error(kWrite).
void write_blob(const PreparedBlob& blob, const std::string& path,
                const std::function<void(uint64_t, uint64_t)>& progress = {});
// The same into `file`, then committed.
void write_blob(const PreparedBlob& blob, AtomicFile& file,
                const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace zcwrap::detail
