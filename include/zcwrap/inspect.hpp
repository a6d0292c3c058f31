// What a blob holds (describe) and whether its bytes are intact (verify),
// as plain structs; to_json() gives the documented JSON forms that
// `zcwrap inspect --json` and `zcwrap verify --json` print.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace zcwrap {

/// One tensor of a model, where the manifest puts it.
struct TensorInfo {
  std::string path;  ///< attribute path, e.g. "layer1.0.conv1.weight"
  std::string kind;  ///< "parameter", "buffer", "attribute", "container" or "constant"
  std::string dtype;  ///< "float32", "bfloat16", "qint8", ...
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  uint64_t bytes = 0;    ///< elements x element size
  uint64_t storage = 0;  ///< index of the storage it views
  uint64_t offset = 0;   ///< of its first element, from the start of the file
};

/// A model's skeleton: the module with its shared tensors taken out.
struct SkeletonInfo {
  std::string kind;         ///< "torchscript", "python_pickle", "torch_export" or "aot_inductor"
  std::string compression;  ///< "zstd" or "none"
  uint64_t stored_bytes = 0;
  uint64_t raw_bytes = 0;
};

/// An aot_inductor model's compiled code, as its package described it.
struct CompiledInfo {
  std::string device;              ///< what it was compiled for (AOTI_DEVICE_KEY): "cpu", "cuda"
  std::string compute_capability;  ///< a CUDA package's AOTI_COMPUTE_CAPABILITY ("90"); else empty
  uint64_t library_bytes = 0;      ///< its .so, the weights' range included
  uint64_t kernel_files = 0;       ///< GPU kernel files (.cubin), placed beside the .so at unwrap
};

struct ModelInfo {
  std::string name;
  SkeletonInfo skeleton;
  uint64_t tensor_count = 0;
  uint64_t shared_bytes = 0;    ///< tensor bytes in the shared data section
  uint64_t unshared_bytes = 0;  ///< tensor bytes left inside the skeleton
  double shared_fraction = 1.0;  ///< shared / (shared + unshared); 1 for no tensors
  /// The Python globals its pickle imports ("module.qualname", sorted, each
  /// once), read from the pickle's opcodes without running it: what
  /// unpickling it from Python may call. Empty for a TorchScript skeleton,
  /// whose code is TorchScript and whose pickles LibTorch reads without
  /// Python.
  std::vector<std::string> imports;
  /// Skeleton kind aot_inductor only, for a blob described from its file.
  std::optional<CompiledInfo> compiled;
  std::vector<TensorInfo> tensors;  ///< empty when described without tensors
};

/// The pickle of a Python pipeline object's attributes other than its
/// modules, stored in the blob (docs/FORMAT.md, "pipeline_object").
struct PipelineObjectInfo {
  std::string compression;  ///< "zstd" or "none"
  uint64_t stored_bytes = 0;
  uint64_t raw_bytes = 0;
  std::vector<std::string> imports;  ///< as ModelInfo::imports
};

/// The header's section table (docs/FORMAT.md, "1. Layout").
struct SectionsInfo {
  uint64_t header_length = 0;
  uint64_t manifest_offset = 0;
  uint64_t manifest_length = 0;
  uint64_t skeletons_offset = 0;
  uint64_t skeletons_length = 0;
  uint64_t data_offset = 0;
  uint64_t data_length = 0;
  uint64_t meta_checksum = 0;
};

struct BlobInfo {
  std::string blob;                   ///< absolute path of the blob
  std::optional<std::string> config;  ///< the actor config it was opened through, if any
  int format_version = 0;
  std::string producer;  ///< "zcwrap 0.2.0, libtorch 2.14.1"
  uint64_t file_size = 0;
  uint64_t alignment = 0;
  bool standalone = false;  ///< one module on its own, not a pipeline
  SectionsInfo header;
  uint64_t storage_count = 0;
  uint64_t storage_bytes = 0;      ///< the data section's storages, summed
  uint64_t tensor_bytes = 0;       ///< all shared tensors' bytes, summed
  uint64_t dedup_saved_bytes = 0;  ///< tensor_bytes beyond storage_bytes
  uint64_t unshared_bytes = 0;
  std::vector<ModelInfo> models;
  std::optional<PipelineObjectInfo> pipeline_object;  ///< a pipeline packed from Python
};

struct DescribeOptions {
  bool tensors = true;  ///< false: ModelInfo::tensors stays empty (counts and sums are still given)
};

/// Describes the blob at `path`, or the blob an actor config at `path` names,
/// after the checks every open makes (header, meta checksum, manifest); it
/// does not read the weights, and of the skeletons it only decompresses the
/// Python pickles, to list what they import (nothing is unpickled). Throws
/// zcwrap::Error (kBadBlob also for a pickle whose imports cannot be read).
BlobInfo describe(const std::string& path, const DescribeOptions& options = {});

/// One storage whose bytes no longer match their checksum.
struct BadStorage {
  uint64_t storage = 0;
  std::string tensor;  ///< the first tensor that views it
  uint64_t expected = 0;
  uint64_t actual = 0;
};

struct VerifyReport {
  std::string blob;
  bool ok = false;
  uint64_t storages = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  std::vector<BadStorage> bad;  ///< every mismatch
  /// Globals the blob's Python pickles import beyond torch's and the plain
  /// Python types torch.load's weights-only mode accepts, each as
  /// "model 'NAME': module.qualname" or "pipeline object: module.qualname":
  /// code that unwrapping from Python runs (weights_only=True refuses it).
  std::vector<std::string> foreign_imports;
};

/// Recomputes the checksum of every storage of the blob at `path` (or named
/// by the actor config at `path`) on `threads` threads (0: all cores). Throws
/// zcwrap::Error when the blob cannot be opened or fails its header,
/// manifest or meta checks; a storage that fails its checksum is reported,
/// not thrown.
VerifyReport verify(const std::string& path, unsigned threads = 0);

/// The JSON forms, documented in docs/FORMAT.md ("inspect --json"):
/// `nlohmann::json j = info;` works through these. Checksums become 16 hex
/// digits.
void to_json(nlohmann::json& j, const TensorInfo& tensor);
void to_json(nlohmann::json& j, const CompiledInfo& compiled);
void to_json(nlohmann::json& j, const ModelInfo& model);
void to_json(nlohmann::json& j, const PipelineObjectInfo& pipeline);
void to_json(nlohmann::json& j, const BlobInfo& info);
void to_json(nlohmann::json& j, const VerifyReport& report);

}  // namespace zcwrap
