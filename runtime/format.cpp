// Blob format v1: header codec and manifest checks. Nothing here trusts the
// bytes it reads: every offset and length is checked for overflow before use.
#include "format.hpp"

#include <algorithm>
#include <array>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "byte_reader.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::format {
namespace {

using nlohmann::json;

[[noreturn]] void bad(const std::string& path, const std::string& what) {
  throw Error(ErrorCode::kBadBlob, path + ": " + what);
}

std::string u64s(uint64_t v) { return std::to_string(v); }

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// Section [offset, offset + length) must lie inside [lo, hi).
void check_section(const std::string& path, const char* name, uint64_t offset,
                   uint64_t length, uint64_t lo, uint64_t hi) {
  if (offset < lo || offset > hi || length > hi - offset) {
    bad(path, std::string("header: ") + name + " section [" + u64s(offset) +
                  ", +" + u64s(length) + ") lies outside [" + u64s(lo) + ", " +
                  u64s(hi) + ")");
  }
}

const char* const kKindNames[] = {"parameter", "buffer", "attribute", "container", "constant"};

// JSON field access that reports what is missing or of the wrong type.
class Fields {
 public:
  Fields(const json& object, std::string where, const std::string& path)
      : object_(object), where_(std::move(where)), path_(path) {
    if (!object_.is_object()) bad(path_, where_ + ": expected a JSON object");
  }

  const json& get(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end()) bad(path_, where_ + ": missing field '" + key + "'");
    return *it;
  }

  uint64_t u64(const char* key) const {
    const json& v = get(key);
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0)) {
      bad(path_, where_ + "." + key + ": expected an unsigned integer");
    }
    return v.get<uint64_t>();
  }

  std::string str(const char* key) const {
    const json& v = get(key);
    if (!v.is_string()) bad(path_, where_ + "." + key + ": expected a string");
    return v.get<std::string>();
  }

  const json& array(const char* key, size_t max_items) const {
    const json& v = get(key);
    if (!v.is_array()) bad(path_, where_ + "." + key + ": expected an array");
    if (v.size() > max_items) {
      bad(path_, where_ + "." + key + ": " + u64s(v.size()) + " entries, more than the limit of " +
                     u64s(max_items));
    }
    return v;
  }

  std::vector<int64_t> dims(const char* key) const {
    const json& v = array(key, kMaxDims);
    std::vector<int64_t> out;
    for (const json& d : v) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max())) {
        bad(path_, where_ + "." + key + ": expected non-negative integers");
      }
      out.push_back(d.get<int64_t>());
    }
    return out;
  }

  const std::string& where() const { return where_; }

 private:
  const json& object_;
  std::string where_;
  const std::string& path_;
};

// A skeleton record (a model's, or the pipeline object's): inside the
// skeletons section, and a raw_length readers may allocate.
SkeletonEntry parse_skeleton(const json& value, const std::string& where, const Header& h, const std::string& path) {
  Fields sk(value, where, path);
  SkeletonEntry skeleton;
  skeleton.kind = sk.str("kind");
  skeleton.compression = sk.str("compression");
  skeleton.offset = sk.u64("offset");
  skeleton.length = sk.u64("length");
  skeleton.raw_length = sk.u64("raw_length");
  skeleton.unshared_bytes = sk.u64("unshared_bytes");
  if (skeleton.compression != "zstd" && skeleton.compression != "none") {
    bad(path, sk.where() + ": unknown compression '" + skeleton.compression + "'");
  }
  if (skeleton.offset > h.skeletons_length || skeleton.length > h.skeletons_length - skeleton.offset) {
    bad(path, sk.where() + ": [" + u64s(skeleton.offset) + ", +" + u64s(skeleton.length) +
                  ") lies outside the skeletons section of " + u64s(h.skeletons_length) + " bytes");
  }
  if (skeleton.compression == "none" && skeleton.raw_length != skeleton.length) {
    bad(path, sk.where() + ": implausible raw_length " + u64s(skeleton.raw_length));
  }
  const uint64_t raw_cap = max_skeleton_raw_length(skeleton.length);
  if (skeleton.raw_length > raw_cap) {
    bad(path, sk.where() + ": implausible raw_length " + u64s(skeleton.raw_length) + " for " +
                  u64s(skeleton.length) + " stored bytes (at most " + u64s(raw_cap) +
                  ": 256 x stored + 64 KiB, and 1 GiB)");
  }
  return skeleton;
}

json skeleton_json(const SkeletonEntry& sk) {
  return {{"kind", sk.kind},           {"compression", sk.compression}, {"offset", sk.offset},
          {"length", sk.length},       {"raw_length", sk.raw_length},   {"unshared_bytes", sk.unshared_bytes}};
}

uint64_t checked_hex64(const std::string& s, const std::string& path, const std::string& where) {
  uint64_t v = 0;
  if (!parse_hex64(s, &v)) bad(path, where + ": expected 16 lower-case hex digits");
  return v;
}

TensorKind parse_kind(const std::string& s, const std::string& path, const std::string& where) {
  for (int i = 0; i < 5; ++i) {
    if (s == kKindNames[i]) return static_cast<TensorKind>(i);
  }
  bad(path, where + ".kind: unknown tensor kind '" + s + "'");
}

// Checks that the elements a tensor can reach lie inside its storage.
void check_extent(const TensorEntry& t, const StorageEntry& s, size_t item,
                  const std::string& path, const std::string& where) {
  if (t.sizes.size() != t.strides.size()) {
    bad(path, where + ": " + u64s(t.sizes.size()) + " sizes but " + u64s(t.strides.size()) + " strides");
  }
  if (t.storage_offset > uint64_t(INT64_MAX)) bad(path, where + ": extent overflows");
  const Extent e = strided_extent(t.sizes, t.strides, static_cast<int64_t>(t.storage_offset), item);
  switch (e.status) {
    case Extent::Status::kNegative: bad(path, where + ": negative size or stride");
    case Extent::Status::kCountOverflow: bad(path, where + ": element count overflows");
    case Extent::Status::kExtentOverflow: bad(path, where + ": extent overflows");
    case Extent::Status::kOk: break;
  }
  if (e.end_bytes > s.nbytes) {
    bad(path, where + ": reaches byte " + u64s(e.end_bytes) + " of storage " + u64s(t.storage) + ", which holds " +
                  u64s(s.nbytes) + " bytes");
  }
}

// The "quantization" object of a tensor entry: present exactly for the
// quantized dtypes, with one finite scale (and zero point) per channel.
void parse_quantization(const json& entry, TensorEntry* t, const std::string& path, const std::string& where) {
  const bool quantized = is_quantized_dtype(t->dtype);
  auto it = entry.find("quantization");
  if (it == entry.end()) {
    if (quantized) bad(path, where + ": dtype " + t->dtype + " needs a quantization object");
    return;
  }
  if (!quantized) bad(path, where + ": quantization given for dtype " + t->dtype);
  Fields f(*it, where + ".quantization", path);
  Quantization& q = t->quantization;
  q.scheme = f.str("scheme");
  auto number = [&](const json& v, const char* what) {
    if (!v.is_number() || !std::isfinite(v.get<double>())) bad(path, f.where() + "." + what + ": expected a finite number");
    return v.get<double>();
  };
  auto integer = [&](const json& v, const char* what) {
    if (!v.is_number_integer()) bad(path, f.where() + "." + what + ": expected an integer");
    return v.get<int64_t>();
  };
  // A zero point is a value of the dtype's integers, as LibTorch requires.
  const int64_t zero_min = t->dtype == "qint8" ? -128 : t->dtype == "quint8" ? 0 : INT32_MIN;
  const int64_t zero_max = t->dtype == "qint8" ? 127 : t->dtype == "quint8" ? 255 : INT32_MAX;
  auto zero_point = [&](const json& v, const char* what) {
    const int64_t z = integer(v, what);
    if (z < zero_min || z > zero_max) {
      bad(path, f.where() + "." + what + ": " + std::to_string(z) + " is outside " + t->dtype + "'s range [" +
                    std::to_string(zero_min) + ", " + std::to_string(zero_max) + "]");
    }
    return z;
  };
  if (q.scheme == "per_tensor_affine") {
    q.scale = number(f.get("scale"), "scale");
    q.zero_point = zero_point(f.get("zero_point"), "zero_point");
  } else if (q.scheme == "per_channel_affine") {
    q.axis = integer(f.get("axis"), "axis");
    if (q.axis < 0 || static_cast<size_t>(q.axis) >= t->sizes.size()) {
      bad(path, f.where() + ".axis: " + std::to_string(q.axis) + " is not a dimension of the tensor");
    }
    const uint64_t channels = static_cast<uint64_t>(t->sizes[static_cast<size_t>(q.axis)]);
    const json& scales = f.array("scales", kMaxTensors);
    const json& zero_points = f.array("zero_points", kMaxTensors);
    if (scales.size() != channels || zero_points.size() != channels) {
      bad(path, f.where() + ": " + u64s(scales.size()) + " scales and " + u64s(zero_points.size()) +
                    " zero points for " + u64s(channels) + " channels");
    }
    for (const json& s : scales) q.scales.push_back(number(s, "scales"));
    for (const json& z : zero_points) q.zero_points.push_back(zero_point(z, "zero_points"));
  } else {
    bad(path, f.where() + ".scheme: unknown quantization scheme '" + q.scheme + "'");
  }
}

// Entry `index` of "storages", checked against the header and against the
// storage before it, which ends at `next_free`.
StorageEntry parse_storage(const json& entry, size_t index, uint64_t next_free, uint64_t alignment,
                           const Header& h, const std::string& path) {
  Fields f(entry, "storages[" + u64s(index) + "]", path);
  StorageEntry s;
  s.offset = f.u64("offset");
  s.nbytes = f.u64("nbytes");
  s.xxh3 = checked_hex64(f.str("xxh3"), path, f.where() + ".xxh3");
  const uint64_t required = storage_alignment(s.nbytes, alignment);
  if (s.offset % required != 0) {
    bad(path, f.where() + ": offset " + u64s(s.offset) + " is not a multiple of " + u64s(required));
  }
  if (s.offset < next_free) {
    bad(path, f.where() + ": offset " + u64s(s.offset) + " overlaps the previous storage, which ends at " +
                  u64s(next_free));
  }
  if (s.offset > h.data_length || s.nbytes > h.data_length - s.offset) {
    bad(path, f.where() + ": [" + u64s(s.offset) + ", +" + u64s(s.nbytes) + ") lies outside the data section of " +
                  u64s(h.data_length) + " bytes");
  }
  return s;
}

// One entry of a model's "tensors", checked against the storages.
TensorEntry parse_tensor(const json& entry, const std::string& where, const std::vector<StorageEntry>& storages,
                         const std::string& path) {
  Fields tf(entry, where, path);
  TensorEntry t;
  t.path = tf.str("path");
  t.kind = parse_kind(tf.str("kind"), path, tf.where());
  t.dtype = tf.str("dtype");
  size_t item = dtype_size(t.dtype);
  if (item == 0) bad(path, tf.where() + " (" + t.path + "): unknown dtype '" + t.dtype + "'");
  t.sizes = tf.dims("sizes");
  t.strides = tf.dims("strides");
  t.storage = tf.u64("storage");
  t.storage_offset = tf.u64("storage_offset");
  if (entry.contains("requires_grad")) {
    const json& rg = entry["requires_grad"];
    if (!rg.is_boolean()) bad(path, tf.where() + ".requires_grad: expected true or false");
    t.requires_grad = rg.get<bool>();
    // LibTorch allows gradients on floating and complex tensors only.
    const bool differentiable = t.dtype.rfind("float", 0) == 0 || t.dtype == "bfloat16" ||
                                t.dtype.rfind("complex", 0) == 0;
    if (t.requires_grad && !differentiable) {
      bad(path, tf.where() + " (" + t.path + "): requires_grad on a " + t.dtype +
                    " tensor (only floating and complex tensors have gradients)");
    }
  }
  if (t.storage >= storages.size()) {
    bad(path, tf.where() + " (" + t.path + "): storage " + u64s(t.storage) + " does not exist (" +
                  u64s(storages.size()) + " storages)");
  }
  check_extent(t, storages[t.storage], item, path, tf.where() + " (" + t.path + ")");
  parse_quantization(entry, &t, path, tf.where() + " (" + t.path + ")");
  return t;
}

// Where a JSON value sits in the manifest, from the parser's events: the key
// at each depth. Storage entries are the values at depth 2 under
// "storages": [ ... ]; tensor entries those at depth 4 under
// "models": [ { "tensors": [ ... ] } ].
class ManifestPosition {
 public:
  void on_event(int depth, json::parse_event_t event, const json& parsed) {
    if (event == json::parse_event_t::key && depth >= 0 && depth < kDepth) {
      keys_[static_cast<size_t>(depth)] = parsed.get<std::string>();
    }
  }
  bool in_storages(int depth) const { return depth == 2 && keys_[1] == "storages"; }
  bool in_storage(int depth) const { return depth > 2 && keys_[1] == "storages"; }
  bool in_tensors(int depth) const { return depth == 4 && keys_[1] == "models" && keys_[3] == "tensors"; }
  bool in_tensor(int depth) const { return depth > 4 && keys_[1] == "models" && keys_[3] == "tensors"; }
  bool is_model(int depth) const { return depth == 2 && keys_[1] == "models"; }

 private:
  static constexpr int kDepth = 4;
  std::array<std::string, kDepth> keys_;
};

// Whether an event closes a value (a scalar, an object or an array).
bool closes_value(json::parse_event_t event) {
  return event == json::parse_event_t::value || event == json::parse_event_t::object_end ||
         event == json::parse_event_t::array_end;
}

}  // namespace

std::vector<uint8_t> encode_header(const Header& h) {
  std::vector<uint8_t> out(kMagic, kMagic + sizeof(kMagic));
  put_u32(out, h.header_length);
  put_u32(out, h.flags);
  put_u64(out, h.file_size);
  put_u64(out, h.alignment);
  put_u64(out, h.manifest_offset);
  put_u64(out, h.manifest_length);
  put_u64(out, h.skeletons_offset);
  put_u64(out, h.skeletons_length);
  put_u64(out, h.data_offset);
  put_u64(out, h.data_length);
  put_u64(out, h.meta_checksum);
  put_u64(out, 0);
  out.resize(std::max<size_t>(h.header_length, kHeaderLengthV1), 0);
  return out;
}

Header decode_header(const uint8_t* bytes, size_t size, uint64_t file_size,
                     const std::string& path) {
  if (size >= kMagicFamilyLength && size < sizeof(kMagic) &&
      std::memcmp(bytes, kMagic, kMagicFamilyLength) == 0) {
    bad(path, "truncated header: file has " + u64s(size) + " bytes");
  }
  if (size < sizeof(kMagic) || std::memcmp(bytes, kMagic, kMagicFamilyLength) != 0) {
    bad(path, "not a zcwrap blob (no ZCWRAP magic at offset 0)");
  }
  if (std::memcmp(bytes, kMagic, sizeof(kMagic)) != 0) {
    bad(path, "blob format version '" + std::string(reinterpret_cast<const char*>(bytes) + 6, 2) +
                  "' is not supported by this zcwrap (it reads version 01); re-pack the model "
                  "with this zcwrap or upgrade zcwrap");
  }
  detail::ByteReader r(bytes, size);
  Header h;
  uint64_t reserved = 0;
  r.skip(sizeof(kMagic));
  if (!r.read_u32(&h.header_length) || !r.read_u32(&h.flags) || !r.read_u64(&h.file_size) ||
      !r.read_u64(&h.alignment) || !r.read_u64(&h.manifest_offset) ||
      !r.read_u64(&h.manifest_length) || !r.read_u64(&h.skeletons_offset) ||
      !r.read_u64(&h.skeletons_length) || !r.read_u64(&h.data_offset) ||
      !r.read_u64(&h.data_length) || !r.read_u64(&h.meta_checksum) || !r.read_u64(&reserved)) {
    bad(path, "truncated header: file has " + u64s(file_size) + " bytes, a header needs " +
                  u64s(kHeaderLengthV1));
  }
  if (h.header_length < kHeaderLengthV1 || h.header_length > kMaxHeaderLength) {
    bad(path, "header: header_length " + u64s(h.header_length) + " is outside [" +
                  u64s(kHeaderLengthV1) + ", " + u64s(kMaxHeaderLength) + "]");
  }
  if (h.header_length > size) {
    bad(path, "truncated header: header_length is " + u64s(h.header_length) + " but the file has " +
                  u64s(file_size) + " bytes");
  }
  if (h.flags != 0) bad(path, "header: unknown flags " + u64s(h.flags) + " (v1 blobs have 0)");
  if (reserved != 0) bad(path, "header: reserved field at offset 88 is " + u64s(reserved) + ", not 0");
  if (h.file_size != file_size) {
    bad(path, "header says the blob is " + u64s(h.file_size) + " bytes but the file has " +
                  u64s(file_size) + (file_size < h.file_size ? " (truncated)" : " (extra bytes)"));
  }
  if (!is_power_of_two(h.alignment) || h.alignment < kMinAlignment || h.alignment > kMaxAlignment) {
    bad(path, "header: alignment " + u64s(h.alignment) +
                  " is not a power of two between 64 and 2097152");
  }
  check_section(path, "manifest", h.manifest_offset, h.manifest_length, h.header_length, file_size);
  if (h.manifest_length > kMaxManifestLength) {
    bad(path, "header: manifest_length " + u64s(h.manifest_length) + " exceeds the limit of " +
                  u64s(kMaxManifestLength));
  }
  check_section(path, "skeletons", h.skeletons_offset, h.skeletons_length,
                h.manifest_offset + h.manifest_length, file_size);
  check_section(path, "data", h.data_offset, h.data_length, h.skeletons_offset + h.skeletons_length,
                file_size);
  if (h.data_offset % kPageSize != 0 || h.data_offset % h.alignment != 0) {
    bad(path, "header: data_offset " + u64s(h.data_offset) + " is not page- and storage-aligned");
  }
  if (h.data_offset + h.data_length != file_size) {
    bad(path, "header: data section ends at " + u64s(h.data_offset + h.data_length) +
                  " but the file ends at " + u64s(file_size));
  }
  return h;
}

uint64_t meta_checksum(const uint8_t* blob, const Header& h) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  XXH3_64bits_update(state, blob, kChecksumFieldOffset);
  XXH3_64bits_update(state, blob + kChecksumFieldOffset + 8,
                     h.header_length - kChecksumFieldOffset - 8);
  XXH3_64bits_update(state, blob + h.manifest_offset, h.manifest_length);
  XXH3_64bits_update(state, blob + h.skeletons_offset, h.skeletons_length);
  uint64_t digest = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return digest;
}

SkeletonKind skeleton_kind(std::string_view name) {
  for (size_t i = 0; i < std::size(kSkeletonKinds); ++i) {
    if (kSkeletonKinds[i].name == name) return static_cast<SkeletonKind>(i);
  }
  return SkeletonKind::kUnknown;
}

const SkeletonKindInfo& skeleton_kind_info(SkeletonKind kind) { return kSkeletonKinds[static_cast<size_t>(kind)]; }

std::string skeleton_kind_name(SkeletonKind kind) { return std::string(skeleton_kind_info(kind).name); }

const char* tensor_kind_name(TensorKind kind) { return kKindNames[static_cast<int>(kind)]; }

const Dtype* find_dtype(std::string_view name) {
  for (const Dtype& d : kDtypes) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

bool is_quantized_dtype(std::string_view dtype) {
  const Dtype* d = find_dtype(dtype);
  return d != nullptr && d->quantized;
}

size_t dtype_size(std::string_view dtype) {
  const Dtype* d = find_dtype(dtype);
  return d == nullptr ? 0 : d->size;
}

Extent strided_extent(const std::vector<int64_t>& sizes, const std::vector<int64_t>& strides, int64_t storage_offset,
                      size_t item) {
  using u128 = unsigned __int128;
  Extent e;
  if (storage_offset < 0) e.status = Extent::Status::kNegative;
  for (size_t d = 0; d < sizes.size() && d < strides.size(); ++d) {
    if (sizes[d] < 0 || strides[d] < 0) e.status = Extent::Status::kNegative;
  }
  if (e.status != Extent::Status::kOk) return e;
  u128 numel = 1;
  for (int64_t size : sizes) {
    numel *= static_cast<uint64_t>(size);
    if (numel > u128(UINT64_MAX)) return {Extent::Status::kCountOverflow, 0};
  }
  if (numel == 0) return e;
  u128 last = static_cast<uint64_t>(storage_offset);  // index of the last element reached
  for (size_t d = 0; d < sizes.size() && d < strides.size(); ++d) {
    last += u128(static_cast<uint64_t>(sizes[d]) - 1) * static_cast<uint64_t>(strides[d]);
    if (last > u128(UINT64_MAX)) return {Extent::Status::kExtentOverflow, 0};
  }
  const u128 end_bytes = (last + 1) * item;
  if (end_bytes > u128(UINT64_MAX)) return {Extent::Status::kExtentOverflow, 0};
  e.end_bytes = static_cast<uint64_t>(end_bytes);
  return e;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016" PRIx64, v);
  return buf;
}

bool parse_hex64(const std::string& text, uint64_t* out) {
  if (text.size() != 16 || text.find_first_not_of("0123456789abcdef") != std::string::npos) return false;
  *out = std::stoull(text, nullptr, 16);
  return true;
}

bool valid_model_name(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

json manifest_to_json(const Manifest& m) {
  json storages = json::array();
  for (const StorageEntry& s : m.storages) {
    storages.push_back({{"offset", s.offset}, {"nbytes", s.nbytes}, {"xxh3", hex64(s.xxh3)}});
  }
  json models = json::array();
  for (const ModelEntry& model : m.models) {
    json tensors = json::array();
    for (const TensorEntry& t : model.tensors) {
      tensors.push_back({{"path", t.path},
                         {"kind", tensor_kind_name(t.kind)},
                         {"dtype", t.dtype},
                         {"sizes", t.sizes},
                         {"strides", t.strides},
                         {"storage", t.storage},
                         {"storage_offset", t.storage_offset}});
      if (t.requires_grad) tensors.back()["requires_grad"] = true;
      const Quantization& q = t.quantization;
      if (q.scheme == "per_tensor_affine") {
        tensors.back()["quantization"] = {{"scheme", q.scheme}, {"scale", q.scale}, {"zero_point", q.zero_point}};
      } else if (q.scheme == "per_channel_affine") {
        tensors.back()["quantization"] = {
            {"scheme", q.scheme}, {"axis", q.axis}, {"scales", q.scales}, {"zero_points", q.zero_points}};
      }
    }
    models.push_back(
        {{"name", model.name}, {"skeleton", skeleton_json(model.skeleton)}, {"tensors", std::move(tensors)}});
  }
  json out = {{"format", "zcwrap"},      {"version", m.version},
              {"producer", m.producer},  {"alignment", m.alignment},
              {"standalone", m.standalone}, {"storages", std::move(storages)},
              {"models", std::move(models)}};
  if (m.pipeline_object) out["pipeline_object"] = skeleton_json(*m.pipeline_object);
  return out;
}

Manifest parse_manifest(const char* text, size_t length, const Header& h,
                        const std::string& path) {
  // Three passes, so that memory follows the entries' own size rather than
  // a JSON tree of every one (several times the text): the first builds the
  // tree without the storage and tensor entries and checks everything else;
  // the second keeps one storage entry at a time, checks it and drops it; the
  // third does the same for the tensor entries, against the storages.
  // (nlohmann's callback parser scans a kept array for dropped values after
  // each object in it: kept, the entries would cost time quadratic in their
  // number.)
  json doc;
  // The entries counted in the first pass, so that the vectors that receive
  // them are allocated once (not doubled, with two copies alive at the peak).
  size_t storage_count = 0;
  std::vector<size_t> tensor_counts(1, 0);  // by model, in order
  try {
    ManifestPosition position;
    doc = json::parse(text, text + length, [&](int depth, json::parse_event_t event, json& parsed) {
      position.on_event(depth, event, parsed);
      if (position.in_storages(depth) && closes_value(event)) {
        ++storage_count;
        return false;
      }
      if (position.in_tensors(depth) && closes_value(event)) {
        ++tensor_counts.back();
        return false;
      }
      if (position.is_model(depth) && event == json::parse_event_t::object_end) tensor_counts.push_back(0);
      return true;
    });
  } catch (const json::exception& e) {
    bad(path, std::string("manifest is not valid JSON: ") + e.what());
  }
  Fields top(doc, "manifest", path);
  Manifest m;
  if (top.str("format") != "zcwrap") bad(path, "manifest.format is not \"zcwrap\"");
  uint64_t version = top.u64("version");
  if (version != kFormatVersion) {
    bad(path, "manifest.version " + u64s(version) + " is not supported (this zcwrap reads 1)");
  }
  m.producer = top.str("producer");
  m.alignment = top.u64("alignment");
  if (m.alignment != h.alignment) {
    bad(path, "manifest.alignment " + u64s(m.alignment) + " differs from the header's " +
                  u64s(h.alignment));
  }
  const json& standalone = top.get("standalone");
  if (!standalone.is_boolean()) bad(path, "manifest.standalone: expected true or false");
  m.standalone = standalone.get<bool>();

  top.array("storages", kMaxStorages);  // entries come in the second pass

  const json& models = top.array("models", kMaxModels);
  if (models.empty()) bad(path, "manifest.models: a blob holds at least one model");
  if (m.standalone && models.size() != 1) bad(path, "manifest: a standalone blob holds exactly one model");
  for (size_t i = 0; i < models.size(); ++i) {
    Fields f(models[i], "models[" + u64s(i) + "]", path);
    ModelEntry model;
    model.name = f.str("name");
    if (!valid_model_name(model.name)) bad(path, f.where() + ": invalid model name '" + model.name + "'");
    for (const ModelEntry& other : m.models) {
      if (other.name == model.name) bad(path, f.where() + ": duplicate model name '" + model.name + "'");
    }
    model.skeleton = parse_skeleton(f.get("skeleton"), f.where() + ".skeleton", h, path);
    f.array("tensors", kMaxTensors);  // entries come in the second pass
    m.models.push_back(std::move(model));
  }
  // Optional (zcwrap 0.2 wrote none): the pickle of a Python pipeline
  // object's attributes other than its modules.
  if (const auto it = doc.find("pipeline_object"); it != doc.end()) {
    if (m.standalone) bad(path, "manifest.pipeline_object: a standalone blob holds no pipeline object");
    m.pipeline_object = parse_skeleton(*it, "manifest.pipeline_object", h, path);
  }

  m.storages.reserve(std::min(storage_count, kMaxStorages));
  for (size_t i = 0; i < m.models.size() && i < tensor_counts.size(); ++i) {
    m.models[i].tensors.reserve(std::min(tensor_counts[i], kMaxTensors));
  }
  ManifestPosition position;
  auto on_storage = [&](int depth, json::parse_event_t event, json& parsed) {
    position.on_event(depth, event, parsed);
    if (position.in_storage(depth)) return true;  // inside an entry: kept until it closes
    if (position.in_storages(depth) && closes_value(event)) {
      if (m.storages.size() >= kMaxStorages) bad(path, "manifest: more than " + u64s(kMaxStorages) + " storages");
      const uint64_t next_free = m.storages.empty() ? 0 : m.storages.back().offset + m.storages.back().nbytes;
      m.storages.push_back(parse_storage(parsed, m.storages.size(), next_free, m.alignment, h, path));
      return false;
    }
    return !closes_value(event);
  };
  try {
    [[maybe_unused]] const json dropped = json::parse(text, text + length, on_storage);  // all of it discarded
  } catch (const json::exception& e) {
    bad(path, std::string("manifest is not valid JSON: ") + e.what());
  }

  size_t model = 0;
  size_t index = 0;  // of the entry in its model's "tensors"
  size_t tensor_total = 0;
  position = ManifestPosition();
  auto on_tensor = [&](int depth, json::parse_event_t event, json& parsed) {
    position.on_event(depth, event, parsed);
    if (position.in_tensor(depth)) return true;  // inside an entry: kept until it closes
    if (position.in_tensors(depth) && closes_value(event)) {
      if (model >= m.models.size()) bad(path, "manifest: tensors outside the models");  // not after pass 1
      if (++tensor_total > kMaxTensors) bad(path, "manifest: more than " + u64s(kMaxTensors) + " tensors");
      const std::string where = "models[" + u64s(model) + "].tensors[" + u64s(index++) + "]";
      m.models[model].tensors.push_back(parse_tensor(parsed, where, m.storages, path));
      return false;
    }
    if (position.is_model(depth) && event == json::parse_event_t::object_end) {
      ++model;
      index = 0;
    }
    // Containers are kept open, so that the parser reports what is inside
    // them; every value outside a tensor entry is dropped once it closes.
    return !closes_value(event);
  };
  try {
    [[maybe_unused]] const json dropped = json::parse(text, text + length, on_tensor);  // all of it discarded
  } catch (const json::exception& e) {
    bad(path, std::string("manifest is not valid JSON: ") + e.what());
  }
  return m;
}

}  // namespace zcwrap::format
