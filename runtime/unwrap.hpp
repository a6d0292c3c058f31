// Unwrap: a checked blob's storages placed on a device, bound to their
// tensors, and each model rebuilt as its skeleton kind says: the inside of
// the public Unwrapped. Internal; includes LibTorch.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <torch/script.h>

#include "aoti.hpp"
#include "blob_file.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace zcwrap::detail {

// A skeleton the Python package rebuilds (an eager module's pickle, an
// ExportedProgram's graph), decompressed, with the model's tensors.
struct PythonSkeleton {
  std::string bytes;
};

// What a model's kind rebuilds around its bound tensors. A new skeleton
// kind adds its alternative here and its case in unwrap.cpp's build_model.
// An AOTInductor model runs through its container (aoti.hpp).
using BuiltModel = std::variant<torch::jit::Module, PythonSkeleton, std::shared_ptr<AotiModel>>;

struct UnwrappedModel {
  std::string name;
  format::SkeletonKind kind = format::SkeletonKind::kTorchScript;
  std::string kind_name;            // as the manifest names it
  std::vector<at::Tensor> tensors;  // bound to the placed storages, manifest order
  BuiltModel built;
};

// Whether an unwrap may give kinds that only Python rebuilds: the C++ API
// refuses them (Error(kBadModel)), the Python package binds their tensors
// and rebuilds them itself.
enum class PythonKinds { kRefuse, kBind };

}  // namespace zcwrap::detail

namespace zcwrap {

struct Unwrapped::State {
  std::shared_ptr<const detail::BlobFile> blob;
  std::vector<detail::UnwrappedModel> models;  // never resized once made: handles point into it
  bool standalone = false;
  std::string device;
  std::vector<std::string> warnings;
  std::optional<std::string> pipeline_object;  // a Python pipeline object's pickle (kBind only)
};

}  // namespace zcwrap

namespace zcwrap::detail {

// The whole unwrap of an opened blob: verify (when asked), prefetch, place
// the storages, bind and rebuild every model.
std::shared_ptr<Unwrapped::State> unwrap_blob(const std::shared_ptr<const BlobFile>& blob,
                                              const UnwrapOptions& options, PythonKinds python = PythonKinds::kRefuse);

}  // namespace zcwrap::detail
