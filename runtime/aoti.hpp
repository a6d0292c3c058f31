// AOTInductor packages (torch._inductor.aoti_compile_and_package's .pt2):
// read for packing, loaded zero-copy over a blob's tensors, written back.
// Internal; includes LibTorch. aoti.cpp needs LibTorch 2.6+'s AOTInductor
// headers; other builds (Debian's 1.13) compile aoti_stub.cpp, which refuses
// with a message.
//
// The skeleton of an "aot_inductor" model (docs/FORMAT.md, "Skeleton
// kinds") is a zip (PyTorchStreamWriter, stored) holding `aoti.json` and
// the package's records, `records/N`, each without the byte ranges ("cuts")
// that the data section holds: the weights embedded in the .so, the
// storages inside the weight files.
#pragma once

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <torch/script.h>

#include "blob_file.hpp"
#include "mapped_load.hpp"

namespace zcwrap::detail {

// Whether this build reads AOTInductor packages (false in aoti_stub.cpp).
bool aoti_supported();

// What a .pt2 archive is, from its record names (the top folder stripped,
// as PyTorchStreamReader lists them).
enum class Pt2Kind { kNone, kAotiPackage, kExportedProgram };
inline Pt2Kind pt2_kind(const std::vector<std::string>& records) {
  bool aoti = false, program = false;
  for (const std::string& r : records) {
    if (r.rfind("data/aotinductor/", 0) == 0) aoti = true;
    if (r.rfind("models/", 0) == 0 && r.size() > 12 && r.compare(r.size() - 5, 5, ".json") == 0) program = true;
  }
  return aoti ? Pt2Kind::kAotiPackage : program ? Pt2Kind::kExportedProgram : Pt2Kind::kNone;
}

// The compiled models of an AOTInductor package, from its record names: the
// folders under data/aotinductor/ ("model" for aoti_compile_and_package;
// package_aoti's names for a package of several), sorted.
inline std::vector<std::string> aoti_package_models(const std::vector<std::string>& records) {
  constexpr std::string_view kDir = "data/aotinductor/";
  std::vector<std::string> models;
  for (const std::string& r : records) {
    if (r.rfind(kDir, 0) != 0) continue;
    const size_t end = r.find('/', kDir.size());
    if (end == std::string::npos || end == kDir.size()) continue;
    std::string name = r.substr(kDir.size(), end - kDir.size());
    if (std::find(models.begin(), models.end(), name) == models.end()) models.push_back(std::move(name));
  }
  std::sort(models.begin(), models.end());
  return models;
}

// An AOTInductor package read for packing: the skeleton and its constants,
// in the order the manifest lists them. The tensors view the package file's
// mapping where they can (kept alive by their storages).
struct AotiPackage {
  struct Constant {
    std::string path;  // the constant's original name (FQN), else its name in the compiled model
    at::Tensor tensor;
  };
  std::string skeleton;
  std::vector<Constant> constants;
  uint64_t unshared_bytes = 0;  // weight bytes that stayed in the skeleton (a .so zcwrap could not cut)
  std::string device;           // the package's AOTI_DEVICE_KEY: "cpu", "cuda"
};

// Reads compiled model `model` (one of aoti_package_models) of the package
// open as `source`: its records and the package's own, not another model's
// (its tensors point into the source's
// mapping, which they keep alive). Loads its .so once (from a temporary
// folder of its own, with its kernel files), on the package's device, to
// learn each constant's name, dtype, shape and where its bytes are. Throws Error(kBadModel) for anything that is not a loadable
// AOTInductor package of this torch (an ExportedProgram archive, a truncated
// or corrupt .so or weight file, a .so that needs symbols this LibTorch does
// not have), Error(kDevice) for a CUDA package on a host without CUDA.
AotiPackage read_aoti_package(const std::shared_ptr<const ModelSource>& source, const std::string& model);

// A model compiled with AOTInductor, running over the blob's tensors as
// user-managed constants (AOTInductorModelContainerCreateWithExternalConstants:
// no weight is copied). Its .so is placed once per machine, named by content,
// in the store folder (store_folder()), and every process loads that file;
// a CUDA package's kernel files likewise, in a folder beside it.
class AotiModel {
 public:
  // Loads model `index` of `blob`; `tensors` are its bound tensors in
  // manifest order (on `device`). Throws Error(kBadBlob) for a malformed
  // skeleton, Error(kWrite) when the store folder fails its checks or cannot
  // hold the .so, Error(kBadModel) when the .so does not load, Error(kDevice)
  // for a device the package was not compiled for.
  static std::shared_ptr<AotiModel> load(const BlobFile& blob, size_t index, std::vector<at::Tensor> tensors,
                                         const c10::Device& device);
  ~AotiModel();
  AotiModel(const AotiModel&) = delete;
  AotiModel& operator=(const AotiModel&) = delete;

  // Runs the model on its flattened inputs; returns its flattened outputs.
  // Throws Error(kBadModel) when the model refuses them. Thread-safe (the
  // container serializes calls).
  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) const;

  // The placed .so, the constants bound to it (manifest order).
  const std::string& library_path() const;
  const std::vector<at::Tensor>& constants() const;
  size_t input_count() const;
  size_t output_count() const;
  // The pytree specs (torch.utils._pytree's JSON) of the model's arguments
  // and result, as torch.export recorded them: what flattens a call's
  // arguments into run()'s inputs and rebuilds its result from the outputs.
  const std::string& in_spec() const;
  const std::string& out_spec() const;

  struct Impl;

 private:
  explicit AotiModel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Unwrapped::Model::run for this kind: the arguments flattened into the
// model's input tensors (each a tensor, or a tuple or list of them, in
// order), and its outputs as one tensor when it has one, else a tuple of
// them (the flat outputs, as AOTIModelPackageLoader::run gives them). Throws
// Error(kBadModel) for an argument that is not a tensor and for what the
// model refuses.
c10::IValue run_aoti(const AotiModel& model, const std::string& name, std::vector<c10::IValue> inputs);

// Writes model `index` of `blob` back as an AOTInductor package at `path`
// (atomically): every record as it was in the package, with the weights
// filled in again from the data section. Throws Error(kWrite), or
// Error(kBadBlob) for a malformed skeleton.
void write_aoti_package(const BlobFile& blob, size_t index, const std::string& path);

}  // namespace zcwrap::detail
