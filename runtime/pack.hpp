// The packer: turns loaded TorchScript modules into a blob. Internal.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <torch/script.h>

#include "aoti.hpp"
#include "file_util.hpp"
#include "format.hpp"
#include "mapped_load.hpp"
#include "zcwrap/options.hpp"

namespace zcwrap::detail {

// One tensor of a skeleton the Python package made, in the order the
// skeleton refers to them.
struct NamedTensor {
  std::string path;  // "layer1.0.conv1.weight", or "tensor[7]" for one no attribute names
  format::TensorKind kind = format::TensorKind::kAttribute;
  at::Tensor tensor;  // on the CPU
};

// A TorchScript module to pack, with the extra files saved beside it.
struct ScriptModel {
  torch::jit::Module module;
  torch::jit::ExtraFilesMap extra_files;
  // The file it was loaded from with its tensors mapped (load_model_files),
  // from which prepare_blob loads it again when it must.
  std::shared_ptr<const ModelSource> mapped_from;
};

// A model of a kind the Python package rebuilds (an eager module's pickle,
// an ExportedProgram's serialized graph): its skeleton, in which tensor N
// stands for tensors[N], and those tensors.
struct PythonModel {
  format::SkeletonKind kind = format::SkeletonKind::kPythonPickle;
  std::string skeleton;
  std::vector<NamedTensor> tensors;
  uint64_t unshared_bytes = 0;  // of tensors left inside the skeleton
};

struct PackInput {
  std::string name;
  std::string origin;  // where it came from, for messages: a file, "module 'm'"
  std::variant<ScriptModel, PythonModel, AotiPackage> model;
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
  format::Manifest parsed;  // the manifest as every reader parses it
  std::string skeletons;
  std::vector<c10::Storage> storages;  // same order as the manifest's
  std::vector<format::StorageEntry> entries;
  std::vector<std::string> names;
  std::vector<format::SkeletonKind> kinds;  // each model's
  Layout layout = Layout::kStandalone;
  uint64_t unshared_bytes = 0;  // tensor bytes left in the skeletons, all models
};

// Loads TorchScript files for packing, each opened once, with their extra
// files; `layout` kStandalone names the one model options.standalone_name.
// Tensors point into a read-only mapping of their file where the archive
// allows it (mapped_load.hpp) instead of being read into memory. Throws
// Error(kInput) when a file is unreadable, Error(kBadModel) with a hint for
// an eager torch.save pickle, an ExportedProgram archive or anything else
// that is not TorchScript. An AOTInductor package (.pt2) is read by
// read_aoti_package, one input per compiled model in it: a package of
// several (package_aoti) gives each its name in the package (in a pipeline,
// NAME.that name), and pack_files packs them as a pipeline.
std::vector<PackInput> load_model_files(const std::vector<ModelFile>& files, Layout layout,
                                        const PackOptions& options);

// Moves every shareable tensor of `models` into the data-section plan and
// replaces it with an empty placeholder: the modules are changed, so pass
// modules the caller owns. Throws Error(kUsage) for bad names or alignment.
// `pipeline_pickle`: the pickle of a Python pipeline object's other
// attributes, stored as the manifest's "pipeline_object" (pipelines only).
// A model loaded from a file with its tensors mapped (load_model_files)
// whose skeleton still holds tensor bytes is loaded again, from the mapping
// already open, with its tensors read: the bytes that stayed must be real,
// not the tags the mapped load leaves in storages it does not reach.
PreparedBlob prepare_blob(std::vector<PackInput>& models, Layout layout, const PackOptions& options,
                          const std::optional<std::string>& pipeline_pickle = std::nullopt);

// Writes the blob atomically to `path`, reporting the data section's bytes
// to `progress` when set. Throws Error(kWrite).
void write_blob(const PreparedBlob& blob, const std::string& path,
                const std::function<void(uint64_t, uint64_t)>& progress = {});
// The same into `file`, left for the caller to commit.
void write_blob(const PreparedBlob& blob, AtomicFile& file,
                const std::function<void(uint64_t, uint64_t)>& progress = {});

}  // namespace zcwrap::detail
