// zcwrap blob format v1: constants, header codec and manifest model.
//
// Internal to the zcwrap build (shared by runtime/ and cli/), not installed.
// The layout is specified once, in docs/FORMAT.md ("1. Layout"): the header
// table there is what encode_header() writes (tests/test_format.cpp reads the
// table and checks every field's offset and size against it), and
// man/zcwrap-format.5 is generated from it at build time.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace zcwrap::format {

inline constexpr char kMagic[8] = {'Z', 'C', 'W', 'R', 'A', 'P', '0', '1'};
inline constexpr size_t kMagicFamilyLength = 6;  // "ZCWRAP", then version
inline constexpr uint32_t kHeaderLengthV1 = 96;
inline constexpr uint32_t kMaxHeaderLength = 64 * 1024;
inline constexpr size_t kChecksumFieldOffset = 80;
inline constexpr uint64_t kPageSize = 4096;
inline constexpr uint64_t kDefaultAlignment = 4096;
inline constexpr uint64_t kMinAlignment = 64;
inline constexpr uint64_t kMaxAlignment = 2 * 1024 * 1024;
inline constexpr uint64_t kMaxManifestLength = 256ull << 20;
// A skeleton's raw_length is at most kMaxSkeletonExpansion x its stored
// length plus kSkeletonRawSlack, and at most kMaxSkeletonRawLength: what a
// reader allocates stays proportional to the blob. Real skeletons expand 2x
// to 17x (a model of 2,500 identical Linear layers).
inline constexpr uint64_t kMaxSkeletonRawLength = 1ull << 30;
inline constexpr uint64_t kMaxSkeletonExpansion = 256;
inline constexpr uint64_t kSkeletonRawSlack = 64 * 1024;
// The most bytes a skeleton stored in `length` bytes may hold once
// decompressed: readers refuse a larger raw_length, and the packer stores a
// skeleton that would expand more (a pickle of 4 MB of zeros shrinks
// 30,000-fold) uncompressed instead.
constexpr uint64_t max_skeleton_raw_length(uint64_t length) {
  return length >= kMaxSkeletonRawLength / kMaxSkeletonExpansion
             ? kMaxSkeletonRawLength
             : std::min(kMaxSkeletonRawLength, length * kMaxSkeletonExpansion + kSkeletonRawSlack);
}
inline constexpr size_t kMaxModels = 4096;
inline constexpr size_t kMaxTensors = 1u << 24;
inline constexpr size_t kMaxStorages = 1u << 24;
inline constexpr size_t kMaxDims = 64;
inline constexpr int kFormatVersion = 1;

// Fixed header fields, decoded from / encoded to little-endian bytes.
struct Header {
  uint32_t header_length = kHeaderLengthV1;
  uint32_t flags = 0;
  uint64_t file_size = 0;
  uint64_t alignment = kDefaultAlignment;
  uint64_t manifest_offset = 0;
  uint64_t manifest_length = 0;
  uint64_t skeletons_offset = 0;
  uint64_t skeletons_length = 0;
  uint64_t data_offset = 0;
  uint64_t data_length = 0;
  uint64_t meta_checksum = 0;
};

// Bytes of a v1 header for `h` (meta_checksum included as given).
std::vector<uint8_t> encode_header(const Header& h);

// Decodes and checks the header at the start of `bytes` (`size` readable
// bytes; `file_size` is the real size of the file). Throws zcwrap::Error
// (kBadBlob) naming `path`, the field and the values.
Header decode_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                     const std::string& path);

// XXH3-64 of the parts the meta checksum covers. `blob` holds at least
// data_offset bytes of the file.
uint64_t meta_checksum(const uint8_t* blob, const Header& h);

// kConstant: a tensor constant of a frozen module's graph, moved to a buffer
// named "_zcwrap_const_N" at pack time.
enum class TensorKind { kParameter, kBuffer, kAttribute, kContainer, kConstant };
const char* tensor_kind_name(TensorKind kind);

struct StorageEntry {
  uint64_t offset = 0;  // relative to data_offset
  uint64_t nbytes = 0;
  uint64_t xxh3 = 0;    // XXH3-64 of the storage bytes
};

// How a quantized tensor's integers map to real values; `scheme` is empty for
// tensors that are not quantized.
struct Quantization {
  std::string scheme;  // "per_tensor_affine" or "per_channel_affine"
  double scale = 1.0;  // per_tensor_affine
  int64_t zero_point = 0;
  int64_t axis = 0;  // per_channel_affine: one scale and zero point per index of sizes[axis]
  std::vector<double> scales;
  std::vector<int64_t> zero_points;
};

struct TensorEntry {
  std::string path;  // attribute path, e.g. "layer1.0.conv1.weight", "cache[2]"
  TensorKind kind = TensorKind::kParameter;
  std::string dtype;  // see dtype_size()
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  uint64_t storage = 0;         // index into Manifest::storages
  uint64_t storage_offset = 0;  // in elements, as in torch
  bool requires_grad = false;   // as saved; unwrap ignores it, unpack restores it
  Quantization quantization;    // for the quantized dtypes (qint8, quint8, qint32)
};

// The kinds of skeleton, by the name the manifest gives them
// (SkeletonEntry::kind): what a model's skeleton is, and so what rebuilds
// it. The one table of kinds, as kDtypes is of dtypes: a new kind is a row
// here and a case in rebind.cpp's build_model (and, for a kind Python
// rebuilds, the Python package's table of kinds). A name this zcwrap does
// not know is kUnknown: describe shows it as named, unwrap refuses it.
enum class SkeletonKind { kTorchScript, kPythonPickle, kTorchExport, kAotInductor, kUnknown };
struct SkeletonKindInfo {
  std::string_view name;         // in the manifest
  std::string_view description;  // for messages: "an eager PyTorch module"
  bool rebuilt_in_python;        // C++ binds its tensors, the Python package rebuilds it
  std::string_view python_file;  // what the Python package's ModelWrapper.unpack writes for it ("": nothing)
};
inline constexpr SkeletonKindInfo kSkeletonKinds[] = {
    {"torchscript", "a TorchScript module", false, ""},
    {"python_pickle", "an eager PyTorch module", true, ""},
    {"torch_export", "a torch.export ExportedProgram", true, "a .pt2 that torch.export.load reads"},
    {"aot_inductor", "a model compiled with AOTInductor", false, ""},
};
static_assert(std::size(kSkeletonKinds) == static_cast<size_t>(SkeletonKind::kUnknown),
              "one row for every SkeletonKind but kUnknown");
SkeletonKind skeleton_kind(std::string_view name);
// The row of a known kind.
const SkeletonKindInfo& skeleton_kind_info(SkeletonKind kind);
// The manifest's name of a known kind.
std::string skeleton_kind_name(SkeletonKind kind);

// Whether a record of an aot_inductor skeleton (a package's record name) is
// a compiled GPU kernel, which the model's code loads by base name from its
// kernel folder ("cubin_dir") on first use: a CUDA package's .cubin files.
inline bool is_aoti_kernel_file(std::string_view record) {
  for (const std::string_view ext : {".cubin", ".fatbin", ".ptx", ".hsaco"}) {
    if (record.size() > ext.size() && record.substr(record.size() - ext.size()) == ext) return true;
  }
  return false;
}

struct SkeletonEntry {
  std::string kind{kSkeletonKinds[0].name};  // see SkeletonKind
  std::string compression = "zstd";  // "zstd" or "none"
  uint64_t offset = 0;               // relative to skeletons_offset
  uint64_t length = 0;               // stored bytes
  uint64_t raw_length = 0;           // bytes after decompression
  uint64_t unshared_bytes = 0;       // tensor bytes left inside the skeleton
};

struct ModelEntry {
  std::string name;
  SkeletonEntry skeleton;
  std::vector<TensorEntry> tensors;
};

struct Manifest {
  int version = kFormatVersion;
  std::string producer;
  uint64_t alignment = kDefaultAlignment;
  bool standalone = false;  // one model packed on its own, not a pipeline
  std::vector<StorageEntry> storages;
  std::vector<ModelEntry> models;
  // A pipeline packed from Python: the pickle of the pipeline object's
  // attributes other than its modules (kind "python_pickle"), a record of
  // the skeletons section like a model's. Never set for a standalone blob.
  std::optional<SkeletonEntry> pipeline_object;
};

// How far a strided view reaches into its storage, computed in 128 bits:
// the manifest check and `zcwrap run`'s input check both use it.
struct Extent {
  enum class Status { kOk, kNegative, kCountOverflow, kExtentOverflow };
  Status status = Status::kOk;
  uint64_t end_bytes = 0;  // one past the last byte reached; 0 for no element
};
// A dims mismatch is the caller's to check: sizes and strides have one entry
// per dimension. Negative sizes, strides or offset give kNegative.
Extent strided_extent(const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides, int64_t storage_offset,
                      size_t item);

// The dtypes a blob can hold: the name the manifest uses, bytes per element,
// and LibTorch's number for it (c10::ScalarType's value, which TorchScript
// archives store, so it does not change between releases). The one table of
// dtypes: torch_util.cpp maps names to at::ScalarType through `torch_code`,
// and a test checks each size against LibTorch's own.
struct Dtype {
  std::string_view name;
  uint8_t size;
  int8_t torch_code;
  bool quantized;
};
inline constexpr Dtype kDtypes[] = {
    {"uint8", 1, 0, false},     {"int8", 1, 1, false},       {"int16", 2, 2, false},
    {"int32", 4, 3, false},     {"int64", 8, 4, false},      {"float16", 2, 5, false},
    {"float32", 4, 6, false},   {"float64", 8, 7, false},    {"complex32", 4, 8, false},
    {"complex64", 8, 9, false}, {"complex128", 16, 10, false}, {"bool", 1, 11, false},
    {"qint8", 1, 12, true},     {"quint8", 1, 13, true},     {"qint32", 4, 14, true},
    {"bfloat16", 2, 15, false},
};

// The entry of kDtypes named `name`; nullptr when there is none.
const Dtype* find_dtype(std::string_view name);

// Bytes per element of a dtype name ("float32", "bfloat16", ...); 0 when the
// name is unknown.
size_t dtype_size(std::string_view dtype);
bool is_quantized_dtype(std::string_view dtype);

nlohmann::json manifest_to_json(const Manifest& m);

// Parses and checks a manifest against the header it came with: known
// dtypes, storages aligned, ascending and inside the data section, every
// tensor's extent inside its storage, skeletons inside their section.
// Throws zcwrap::Error (kBadBlob) naming `path` and the offending entry.
Manifest parse_manifest(const char* text, size_t length, const Header& h,
                        const std::string& path);

// Model names must be non-empty, unique, and made of [A-Za-z0-9_.-].
bool valid_model_name(const std::string& name);

// Where a storage of `nbytes` may start: on a multiple of `alignment`, or of
// kMinAlignment when it is smaller than `alignment`, so that thousands of tiny
// tensors (biases, norms) do not each take a page.
inline uint64_t storage_alignment(uint64_t nbytes, uint64_t alignment) {
  return nbytes < alignment ? kMinAlignment : alignment;
}

inline bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Rounds `v` up to a multiple of `a` (a power of two); false on overflow.
inline bool align_up(uint64_t v, uint64_t a, uint64_t* out) {
  if (v > UINT64_MAX - (a - 1)) return false;
  *out = (v + a - 1) & ~(a - 1);
  return true;
}

std::string hex64(uint64_t v);

// Parses exactly 16 lower-case hex digits (what hex64 writes).
bool parse_hex64(const std::string& text, uint64_t* out);

}  // namespace zcwrap::format
