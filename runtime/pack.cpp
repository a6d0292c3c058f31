#include "pack.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include <caffe2/serialize/inline_container.h>
#include <nlohmann/json.hpp>
#include <xxhash.h>
#include <zstd.h>

#include "constants.hpp"
#include "mapped_load.hpp"
#include "torch_compat.hpp"
#include "torch_util.hpp"
#include "tensor_walk.hpp"
#include "messages.hpp"
#include "file_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap::detail {
namespace {

constexpr int kZstdLevel = 9;  // skeletons are small; smaller blobs beat a few ms of pack time

std::string producer() { return std::string("zcwrap ") + kVersion + ", libtorch " + kLibTorchVersion; }

// Bytes are read in chunks of this size; pages of a mapped source file are
// dropped behind each chunk, so the packer's RSS does not grow with the model.
constexpr uint64_t kChunk = 64ull << 20;

uint64_t hash(const c10::Storage& storage) {
  const auto* bytes = static_cast<const uint8_t*>(storage.data_ptr().get());
  const uint64_t nbytes = storage.nbytes();
  const bool mapped = is_mapped_file_storage(storage);
  const std::unique_ptr<XXH3_state_t, XXH_errorcode (*)(XXH3_state_t*)> state(XXH3_createState(), &XXH3_freeState);
  if (!state) throw std::bad_alloc();
  XXH3_64bits_reset(state.get());
  for (uint64_t done = 0; done < nbytes; done += kChunk) {
    const uint64_t n = std::min(kChunk, nbytes - done);
    XXH3_64bits_update(state.get(), bytes + done, n);
    if (mapped) drop_mapped_pages(bytes + done, n);
  }
  return XXH3_64bits_digest(state.get());
}

// Assigns each storage an index once: by identity first (tied weights and
// views), then by content across models (the same tensor saved in two files
// of a pipeline). Equal bytes within one model are not merged: that would
// alias tensors the model keeps apart, which shows once they are copied to a
// writable device.
class StoragePlan {
 public:
  uint64_t add(const c10::Storage& storage, size_t model) {
    const void* identity = storage.unsafeGetStorageImpl();
    auto known = by_identity_.find(identity);
    if (known != by_identity_.end()) return known->second;

    const auto* bytes = static_cast<const uint8_t*>(storage.data_ptr().get());
    const uint64_t nbytes = storage.nbytes();
    const uint64_t digest = hash(storage);
    auto range = by_content_.equal_range({digest, nbytes});
    for (auto it = range.first; it != range.second; ++it) {
      if (last_user_[it->second] == model) continue;
      const auto* other = static_cast<const uint8_t*>(storages_[it->second].data_ptr().get());
      if (nbytes == 0 || std::memcmp(bytes, other, nbytes) == 0) {
        by_identity_.emplace(identity, it->second);
        last_user_[it->second] = model;
        return it->second;
      }
    }
    const uint64_t index = storages_.size();
    storages_.push_back(storage);
    last_user_.push_back(model);
    entries_.push_back({0, nbytes, digest});
    by_identity_.emplace(identity, index);
    by_content_.emplace(std::make_pair(digest, nbytes), index);
    return index;
  }

  // Lays the storages out in order (see format::storage_alignment); returns
  // the data section's length.
  uint64_t assign_offsets(uint64_t alignment) {
    uint64_t end = 0;
    for (format::StorageEntry& e : entries_) {
      format::align_up(end, format::storage_alignment(e.nbytes, alignment), &e.offset);
      end = e.offset + e.nbytes;
    }
    return end;
  }

  std::vector<c10::Storage>& storages() { return storages_; }
  std::vector<format::StorageEntry>& entries() { return entries_; }

 private:
  std::vector<c10::Storage> storages_;
  std::vector<format::StorageEntry> entries_;
  std::vector<size_t> last_user_;  // the last model that took each storage
  std::map<const void*, uint64_t> by_identity_;
  std::multimap<std::pair<uint64_t, uint64_t>, uint64_t> by_content_;
};

// Bytes of tensor data that stayed inside a saved skeleton: the records that
// hold storages (data/) and graph constants (constants/).
uint64_t unshared_bytes(const std::string& skeleton) {
  std::istringstream in(skeleton);
  caffe2::serialize::PyTorchStreamReader reader(&in);
  uint64_t total = 0;
  for (const std::string& record : reader.getAllRecords()) {
    if (record.rfind("data/", 0) == 0 || record.rfind("constants/", 0) == 0) {
      total += std::get<1>(reader.getRecord(record));
    }
  }
  return total;
}

format::Quantization quantization_of(const at::Tensor& t) {
  format::Quantization q;
  if (t.qscheme() == at::kPerTensorAffine) {
    q.scheme = "per_tensor_affine";
    q.scale = t.q_scale();
    q.zero_point = t.q_zero_point();
  } else {
    q.scheme = "per_channel_affine";
    q.axis = t.q_per_channel_axis();
    const at::Tensor scales = t.q_per_channel_scales().to(at::kDouble).contiguous();
    const at::Tensor zero_points = t.q_per_channel_zero_points().to(at::kLong).contiguous();
    q.scales.assign(scales.data_ptr<double>(), scales.data_ptr<double>() + scales.numel());
    q.zero_points.assign(zero_points.data_ptr<int64_t>(), zero_points.data_ptr<int64_t>() + zero_points.numel());
  }
  return q;
}

std::string compress(const std::string& raw, const std::string& origin) {
  std::string out(ZSTD_compressBound(raw.size()), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), kZstdLevel);
  if (ZSTD_isError(n)) {
    throw Error(ErrorCode::kInternal, origin + ": zstd failed: " + ZSTD_getErrorName(n));
  }
  out.resize(n);
  return out;
}

// How a skeleton is stored: zstd, or as it is where every unwrap reads it
// in place (an AOTInductor model's compiled code: resnet50's 2.3 MB .so is
// compared with the store's copy by every worker, and decompressing and
// copying it cost more than the rest of its unwrap).
enum class Compression { kZstd, kNone };

// Appends `raw` to the skeletons section and fills `entry`'s record. Zstd
// unless asked otherwise, or unless the result would expand more than
// readers accept (format::max_skeleton_raw_length, their guard against
// decompression bombs): a module that holds 4 MB of zeros as bytes or a
// numpy array pickles into a skeleton that shrinks 30,000-fold, and is
// stored as it is.
void add_skeleton(const std::string& raw, const std::string& origin, format::SkeletonEntry* entry,
                  std::string* skeletons, Compression compression = Compression::kZstd) {
  if (raw.size() > format::kMaxSkeletonRawLength) {
    throw Error(ErrorCode::kBadModel,
                origin + ": its skeleton (the module without its shared tensors) is " + std::to_string(raw.size()) +
                    " bytes, more than the " + std::to_string(format::kMaxSkeletonRawLength) +
                    " (1 GiB) a blob holds per model; keep large data in tensors, which the blob shares, "
                    "not in numpy arrays, bytes or tensors that cannot be shared");
  }
  const std::string packed = compression == Compression::kZstd ? compress(raw, origin) : std::string();
  const bool as_is = compression == Compression::kNone || raw.size() > format::max_skeleton_raw_length(packed.size());
  const std::string& stored = as_is ? raw : packed;
  entry->compression = as_is ? "none" : "zstd";
  entry->offset = skeletons->size();
  entry->length = stored.size();
  entry->raw_length = raw.size();
  *skeletons += stored;
}

}  // namespace

namespace {

// How load_script gets a model's tensors: pointing into the file's mapping
// where the archive allows (mapped_load.hpp), or read into memory.
enum class Tensors { kMapped, kRead };

// Loads one TorchScript file through its source (one open): checks its
// records first, then loads it with its tensors as asked (read when the
// archive does not allow mapping them).
ScriptModel load_script(const std::shared_ptr<const ModelSource>& shared, Tensors tensors) {
  const bool mapped = tensors == Tensors::kMapped;
  const std::string& path = shared->path;
  ScriptModel model;
  try {
    caffe2::serialize::PyTorchStreamReader reader(read_adapter(shared));
    bool has_code = false;
    for (const std::string& record : reader.getAllRecords()) {
      if (record.rfind("code/", 0) == 0) has_code = true;
      if (record.rfind("extra/", 0) == 0) model.extra_files.emplace(record.substr(6), "");
    }
    if (!has_code || !reader.hasRecord("constants.pkl")) {
      throw Error(ErrorCode::kBadModel,
                  path + ": a torch.save pickle (an eager model or a state_dict), not a TorchScript "
                         "module; save it with torch.jit.save(torch.jit.script(model), PATH) or "
                         "torch.jit.trace");
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, path + ": not a TorchScript archive (" + first_line(e) + ")");
  }
  try {
    std::optional<torch::jit::Module> module;
    if (mapped) module = load_mapped(shared, model.extra_files);
    model.module = module ? *module : torch::jit::load(read_adapter(shared), at::kCPU, model.extra_files);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, path + ": cannot load the TorchScript module: " + first_line(e));
  }
  if (mapped) model.mapped_from = shared;
  return model;
}

// A zip archive's record names; none for what is not a readable zip
// (load_script then says what it is).
std::vector<std::string> archive_records(const std::shared_ptr<const ModelSource>& source) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(read_adapter(source));
    return reader.getAllRecords();
  } catch (const std::exception&) {
    return {};
  }
}

}  // namespace

std::vector<PackInput> load_model_files(const std::vector<ModelFile>& files, Layout layout,
                                        const PackOptions& options) {
  std::vector<PackInput> inputs;
  for (const ModelFile& file : files) {
    const std::shared_ptr<const ModelSource> source = open_model_source(file.path);
    const std::string name = layout == Layout::kStandalone ? options.standalone_name : file.name;
    const std::vector<std::string> records = archive_records(source);
    switch (pt2_kind(records)) {
      case Pt2Kind::kAotiPackage: {
        // A package of several compiled models (package_aoti) gives one
        // model each, by its name in the package (NAME.its name in a
        // pipeline); pack_files then packs a pipeline.
        const std::vector<std::string> models = aoti_package_models(records);
        if (models.empty()) {
          throw Error(ErrorCode::kBadModel, file.path + ": not an AOTInductor package (no compiled model in a "
                                                        "folder data/aotinductor/NAME/)");
        }
        for (const std::string& model : models) {
          const std::string named = models.size() == 1 ? name
                                    : layout == Layout::kStandalone ? model
                                                                    : name + "." + model;
          const std::string origin = models.size() == 1 ? file.path : file.path + " (model '" + model + "')";
          inputs.push_back({named, origin, read_aoti_package(source, model)});
        }
        break;
      }
      case Pt2Kind::kExportedProgram:
        throw Error(ErrorCode::kBadModel,
                    file.path + ": an ExportedProgram archive (torch.export.save), not an AOTInductor package or a "
                                "TorchScript module; compile it with torch._inductor.aoti_compile_and_package, or "
                                "pack torch.export.load(PATH) from Python with zcwrap.ModelWrapper.from_model");
      case Pt2Kind::kNone:
        inputs.push_back({name, file.path, load_script(source, Tensors::kMapped)});
        break;
    }
  }
  return inputs;
}

PackInput copy_module(const std::string& name, const torch::jit::Module& model) {
  std::stringstream buffer;
  try {
    model.save(buffer);
    buffer.seekg(0);
    return {name, "module '" + name + "'", ScriptModel{torch::jit::load(buffer, at::kCPU), {}, nullptr}};
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, "module '" + name + "': cannot serialize: " + first_line(e));
  }
}

namespace {

// A TorchScript model's skeleton (the module saved with its tensors replaced
// by empty placeholders), the tensors taken out of it, and the tensor bytes
// that stayed inside.
struct ScriptSkeleton {
  std::string raw;
  std::vector<NamedTensor> tensors;
  uint64_t unshared_bytes = 0;
};

ScriptSkeleton script_skeleton(ScriptModel& model, const std::string& origin) {
  ScriptSkeleton out;
  try {
    hoist_tensor_constants(model.module);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, origin + ": cannot move graph constants to attributes: " + first_line(e));
  }
  rewrite_tensors(model.module, [&](const std::string& path, format::TensorKind kind, const at::Tensor& t) {
    out.tensors.push_back({path, kind, t});
    // A quantized tensor's placeholder is an empty tensor of its integer
    // representation: LibTorch 2.x cannot reload an empty quantized tensor
    // ("setStorage: ... out of bounds for storage of size 0").
    return at::empty({0}, at::TensorOptions().dtype(c10::toUnderlying(t.scalar_type())));
  });
  std::ostringstream saved;
  try {
    model.module.save(saved, model.extra_files);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, origin + ": cannot save the skeleton: " + first_line(e));
  }
  out.raw = saved.str();
  out.unshared_bytes = unshared_bytes(out.raw);
  return out;
}

}  // namespace

PreparedBlob prepare_blob(std::vector<PackInput>& models, Layout layout, const PackOptions& options,
                          const std::optional<std::string>& pipeline_pickle) {
  const bool standalone = layout == Layout::kStandalone;
  const uint64_t alignment = options.alignment;
  if (!format::is_power_of_two(alignment) || alignment < format::kMinAlignment ||
      alignment > format::kMaxAlignment) {
    throw Error(ErrorCode::kUsage, "alignment " + std::to_string(alignment) +
                                       " is not a power of two from 64 to 2097152 (2 MiB)");
  }
  if (models.empty()) throw Error(ErrorCode::kUsage, "nothing to pack: no models given");
  if (standalone && pipeline_pickle) throw Error(ErrorCode::kUsage, "a standalone blob holds no pipeline object");
  if (standalone && models.size() != 1) {
    throw Error(ErrorCode::kUsage, "a standalone blob holds exactly one model");
  }
  std::set<std::string> seen;
  for (const PackInput& input : models) {
    if (!format::valid_model_name(input.name)) {
      throw Error(ErrorCode::kUsage, "invalid model name '" + input.name +
                                         "' (use 1-128 of A-Z a-z 0-9 _ . -)");
    }
    if (!seen.insert(input.name).second) {
      throw Error(ErrorCode::kUsage, "model name '" + input.name + "' is given twice");
    }
  }

  PreparedBlob blob;
  StoragePlan plan;
  format::Manifest manifest;
  manifest.producer = producer();
  manifest.alignment = alignment;
  manifest.standalone = standalone;
  std::string skeletons;
  for (PackInput& input : models) {
    format::ModelEntry entry;
    entry.name = input.name;
    auto add_tensor = [&](const NamedTensor& named) {
      const at::Tensor& t = named.tensor;
      format::TensorEntry te;
      te.path = named.path;
      te.kind = named.kind;
      te.dtype = dtype_name(t.scalar_type());
      te.sizes = t.sizes().vec();
      te.strides = t.strides().vec();
      te.storage = plan.add(t.storage(), manifest.models.size());
      te.storage_offset = static_cast<uint64_t>(t.storage_offset());
      te.requires_grad = t.requires_grad();
      if (t.is_quantized()) te.quantization = quantization_of(t);
      entry.tensors.push_back(std::move(te));
    };
    format::SkeletonKind kind = format::SkeletonKind::kTorchScript;
    if (auto* python = std::get_if<PythonModel>(&input.model)) {
      for (const NamedTensor& named : python->tensors) {
        if (!is_shareable(named.tensor)) {
          throw Error(ErrorCode::kBadModel, input.origin + ": tensor '" + named.path +
                                                "' cannot be shared (not a dense CPU tensor of a supported dtype)");
        }
        add_tensor(named);
      }
      kind = python->kind;
      add_skeleton(python->skeleton, input.origin, &entry.skeleton, &skeletons);
      entry.skeleton.unshared_bytes = python->unshared_bytes;
    } else if (auto* aoti = std::get_if<AotiPackage>(&input.model)) {
      for (const AotiPackage::Constant& c : aoti->constants) {
        add_tensor({c.path, format::TensorKind::kConstant, c.tensor});
      }
      kind = format::SkeletonKind::kAotInductor;
      add_skeleton(aoti->skeleton, input.origin, &entry.skeleton, &skeletons, Compression::kNone);
      entry.skeleton.unshared_bytes = aoti->unshared_bytes;
    } else {
      auto& script = std::get<ScriptModel>(input.model);
      ScriptSkeleton skeleton = script_skeleton(script, input.origin);
      if (skeleton.unshared_bytes > 0 && script.mapped_from) {
        // What stayed must be real bytes, not the tags the mapped load leaves
        // in storages it does not reach: load it again, reading its tensors.
        script = load_script(script.mapped_from, Tensors::kRead);
        skeleton = script_skeleton(script, input.origin);
      }
      for (const NamedTensor& named : skeleton.tensors) add_tensor(named);
      add_skeleton(skeleton.raw, input.origin, &entry.skeleton, &skeletons);
      entry.skeleton.unshared_bytes = skeleton.unshared_bytes;
    }
    entry.skeleton.kind = format::skeleton_kind_name(kind);
    blob.unshared_bytes += entry.skeleton.unshared_bytes;
    blob.kinds.push_back(kind);
    manifest.models.push_back(std::move(entry));
  }

  if (pipeline_pickle) {
    format::SkeletonEntry& entry = manifest.pipeline_object.emplace();
    entry.kind = format::skeleton_kind_name(format::SkeletonKind::kPythonPickle);
    add_skeleton(*pipeline_pickle, "the pipeline object", &entry, &skeletons);
  }

  const uint64_t data_length = plan.assign_offsets(alignment);
  manifest.storages = plan.entries();
  blob.manifest = format::manifest_to_json(manifest).dump();
  blob.skeletons = std::move(skeletons);

  format::Header& h = blob.header;
  h.alignment = alignment;
  h.manifest_offset = h.header_length;
  h.manifest_length = blob.manifest.size();
  h.skeletons_offset = h.manifest_offset + h.manifest_length;
  h.skeletons_length = blob.skeletons.size();
  format::align_up(h.skeletons_offset + h.skeletons_length, std::max(alignment, format::kPageSize),
                   &h.data_offset);
  h.data_length = data_length;
  h.file_size = h.data_offset + h.data_length;

  // The checksum covers the header with its own field zero, so build the
  // bytes it covers once and hash them.
  std::string meta(reinterpret_cast<const char*>(format::encode_header(h).data()), h.header_length);
  meta += blob.manifest;
  meta += blob.skeletons;
  h.meta_checksum = format::meta_checksum(reinterpret_cast<const uint8_t*>(meta.data()), h);

  // Every reader checks the manifest (each tensor inside its storage, ...);
  // check it here too, before anything is written, so that a model the
  // readers would refuse never replaces a good blob. (LibTorch 1.13 loads a
  // byte view such as a.view(torch.uint8)[4:] as a tensor past its storage.)
  std::string origins;
  for (const PackInput& input : models) origins += (origins.empty() ? "" : ", ") + input.origin;
  try {
    blob.parsed = format::parse_manifest(blob.manifest.data(), blob.manifest.size(), h, origins);
  } catch (const Error& e) {
    throw Error(ErrorCode::kBadModel, std::string(e.what()) + " (in the model as loaded; nothing was written)");
  }

  blob.storages = std::move(plan.storages());
  blob.entries = std::move(manifest.storages);
  blob.layout = layout;
  for (const PackInput& input : models) blob.names.push_back(input.name);
  return blob;
}

void write_blob(const PreparedBlob& blob, const std::string& path,
                const std::function<void(uint64_t, uint64_t)>& progress) {
  AtomicFile file(path);
  write_blob(blob, file, progress);
  file.commit();
}

void write_blob(const PreparedBlob& blob, AtomicFile& file, const std::function<void(uint64_t, uint64_t)>& progress) {
  const format::Header& h = blob.header;
  const std::vector<uint8_t> header = format::encode_header(h);
  file.write(header.data(), header.size());
  file.write(blob.manifest.data(), blob.manifest.size());
  file.write(blob.skeletons.data(), blob.skeletons.size());
  uint64_t pos = h.skeletons_offset + h.skeletons_length;
  file.write_zeros(h.data_offset - pos);
  pos = 0;
  for (size_t i = 0; i < blob.entries.size(); ++i) {
    const format::StorageEntry& e = blob.entries[i];
    file.write_zeros(e.offset - pos);
    const auto* bytes = static_cast<const uint8_t*>(blob.storages[i].data_ptr().get());
    // A storage of a mapped model file is copied file to file, as cp does:
    // its bytes need not pass through this process (hash() read them once).
    const std::optional<FileSpan> span = mapped_file_span(blob.storages[i]);
    for (uint64_t done = 0; done < e.nbytes; done += kChunk) {
      const uint64_t n = std::min(kChunk, e.nbytes - done);
      const uint64_t copied = span ? file.copy_from(span->fd, span->offset + done, n) : 0;
      if (copied < n) {
        file.write(bytes + done + copied, n - copied);
        if (span) drop_mapped_pages(bytes + done + copied, n - copied);
      }
      if (progress) progress(e.offset + done + n, h.data_length);
    }
    pos = e.offset + e.nbytes;
  }
  if (progress) progress(h.data_length, h.data_length);
}

}  // namespace zcwrap::detail
