#include "zcwrap/model_wrapper.hpp"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include <nlohmann/json.hpp>

#include <caffe2/serialize/inline_container.h>

#include "blob_file.hpp"
#include "constants.hpp"
#include "device_load.hpp"
#include "pack.hpp"
#include "torch_compat.hpp"
#include "torch_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap {

using detail::BlobFile;
using nlohmann::json;

struct Unwrapped::State {
  std::shared_ptr<const BlobFile> blob;
  std::vector<std::string> names;
  std::vector<torch::jit::Module> modules;
  bool standalone = false;
  std::string device;
  std::vector<std::string> warnings;
};

namespace {

constexpr int kActorVersion = 1;
constexpr const char* kDefaultStore = "/dev/shm/zcwrap";

std::string join_names(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string store_dir(const PackOptions& options) {
  if (!options.store_dir.empty()) return options.store_dir;
  const char* env = std::getenv("ZCWRAP_STORE");
  return env != nullptr && *env != '\0' ? env : kDefaultStore;
}

// A copy of `model` that the packer may change: save and reload, so the
// caller's module and its tensors are never touched, even transiently.
detail::PackInput owned_copy(const std::string& name, const torch::jit::Module& model) {
  std::stringstream buffer;
  try {
    model.save(buffer);
    buffer.seekg(0);
    return {name, "module '" + name + "'", torch::jit::load(buffer, at::kCPU), {}};
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, "module '" + name + "': cannot serialize: " + detail::first_line(e));
  }
}

ModelWrapper wrapper_for(const std::string& path, const detail::PreparedBlob& blob);

// Writes `blob` into the store under its meta checksum, unless a blob of that
// name and content is there already.
ModelWrapper store(const detail::PreparedBlob& blob, const PackOptions& options) {
  const std::string dir = store_dir(options);
  if (int err = detail::make_dirs(dir); err != 0) {
    throw Error(ErrorCode::kWrite, dir + ": cannot create the zcwrap store: " + detail::errno_text(err) +
                                       "; set ZCWRAP_STORE to a writable folder");
  }
  const std::string path = dir + "/" + format::hex64(blob.header.meta_checksum) + ".zcb";
  try {
    auto existing = BlobFile::open(path);
    if (existing->header().meta_checksum == blob.header.meta_checksum) return wrapper_for(path, blob);
  } catch (const Error&) {
    // Absent or damaged: write it afresh below.
  }
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) == 0) {
    const uint64_t free_bytes = uint64_t(fs.f_bavail) * fs.f_frsize;
    if (free_bytes < blob.header.file_size) {
      throw Error(ErrorCode::kWrite,
                  dir + ": no room for a " + std::to_string(blob.header.file_size) + "-byte blob (" +
                      std::to_string(free_bytes) +
                      " bytes free); set ZCWRAP_STORE to a folder on a larger filesystem "
                      "(containers often give /dev/shm only 64 MiB)");
    }
  }
  try {
    detail::write_blob(blob, path, options.progress);
  } catch (const Error& e) {
    throw Error(e.code(), std::string(e.what()) +
                              "; set ZCWRAP_STORE to a folder with room for the blob if this one is full");
  }
  return wrapper_for(path, blob);
}

ModelWrapper wrapper_for(const std::string& path, const detail::PreparedBlob& blob) {
  json config = {{"zcwrap_actor", kActorVersion},
                 {"blob", detail::absolute_path(path)},
                 {"blob_size", blob.header.file_size},
                 {"meta_checksum", format::hex64(blob.header.meta_checksum)},
                 {"standalone", blob.standalone},
                 {"models", blob.names}};
  return ModelWrapper::from_actor(config);
}

[[noreturn]] void bad_config(const std::string& what) {
  throw Error(ErrorCode::kBadBlob, "actor config: " + what);
}

c10::Device parse_device(const std::string& device) {
  c10::Device parsed(c10::kCPU);
  try {
    parsed = c10::Device(device);
  } catch (const std::exception&) {
    throw Error(ErrorCode::kDevice, "device '" + device + "': not a device name (try cpu or cuda:0)");
  }
  if (parsed.is_cuda()) {
    if (!at::hasCUDA()) {
      throw Error(ErrorCode::kDevice, "device '" + device + "': this LibTorch has no CUDA support");
    }
    const int count = at::detail::getCUDAHooks().getNumGPUs();
    if (parsed.has_index() ? parsed.index() >= count : count == 0) {
      throw Error(ErrorCode::kDevice, "device '" + device + "': only " + std::to_string(count) +
                                          " CUDA device(s) present");
    }
  } else if (!parsed.is_cpu()) {
    throw Error(ErrorCode::kDevice, "device '" + device + "': only cpu and cuda devices are supported");
  }
  return parsed;
}

// One c10::Storage per blob storage: on the CPU a view of the mapping whose
// deleter keeps the mapping alive; elsewhere one copy per storage, or with
// `use_fast_load` on CUDA views of one device buffer (runtime/cuda_loader.cpp).
std::vector<c10::Storage> make_storages(const std::shared_ptr<const BlobFile>& blob,
                                        const c10::Device& device, bool use_fast_load = false) {
  if (use_fast_load && device.is_cuda() && detail::fast_load_built()) {
    return detail::fast_load_storages(*blob, device);
  }
  const format::Manifest& m = blob->manifest();
  std::vector<c10::Storage> out;
  out.reserve(m.storages.size());
  for (size_t i = 0; i < m.storages.size(); ++i) {
    // Unless mapped copy-on-write the pages are PROT_READ, so a write through
    // this pointer faults instead of changing the weights other workers see.
    void* data = blob->storage_data(i);
    auto* keep = new std::shared_ptr<const BlobFile>(blob);
    c10::DataPtr ptr(data, keep, [](void* ctx) { delete static_cast<std::shared_ptr<const BlobFile>*>(ctx); },
                     c10::Device(c10::kCPU));
    c10::Storage storage(c10::Storage::use_byte_size_t(), m.storages[i].nbytes, std::move(ptr),
                         /*allocator=*/nullptr, /*resizable=*/false);
    if (!device.is_cpu()) {
      at::Tensor bytes = at::empty({0}, at::kByte).set_(storage, 0, {int64_t(m.storages[i].nbytes)}, {1});
      storage = bytes.to(device).storage();
    }
    out.push_back(std::move(storage));
  }
  return out;
}

// Warms the data section's pages as asked; returns warnings for what the
// system refused.
std::vector<std::string> prefetch(const BlobFile& blob, Prefetch mode) {
  std::vector<std::string> warnings;
  const format::Header& h = blob.header();
  uint8_t* data = blob.data_section();
  const size_t length = h.data_length;
  if (length == 0 || mode == Prefetch::kNone) return warnings;
  if (h.alignment >= (2u << 20) && ::madvise(data, length, MADV_HUGEPAGE) != 0) {
    warnings.push_back(blob.path() + ": huge pages not available for this mapping (" +
                       detail::errno_text(errno) + ")");
  }
  if (mode == Prefetch::kWillNeed) {
    ::madvise(data, length, MADV_WILLNEED);
    return warnings;
  }
  // Reading one byte a page faults each page in; volatile keeps the loop.
  const long page = ::sysconf(_SC_PAGESIZE);
  volatile uint8_t sink = 0;
  for (size_t off = 0; off < length; off += static_cast<size_t>(page)) sink = sink ^ data[off];
  if (mode == Prefetch::kLock && ::mlock(data, length) != 0) {
    struct rlimit limit {};
    ::getrlimit(RLIMIT_MEMLOCK, &limit);
    warnings.push_back(blob.path() + ": cannot lock " + std::to_string(length) + " bytes in memory (" +
                       detail::errno_text(errno) + "; RLIMIT_MEMLOCK is " + std::to_string(limit.rlim_cur) +
                       " bytes): raise it with ulimit -l or LimitMEMLOCK=; pages were prefetched, not locked");
  }
  return warnings;
}

// An empty tensor of the entry's dtype (and quantizer) to bind a storage to.
at::Tensor empty_like_entry(const format::TensorEntry& t, at::ScalarType dtype, const c10::Device& device) {
  const detail::QuietWarnings quiet;  // LibTorch 2.10+ warns of quantized dtypes' deprecation on each one
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  const format::Quantization& q = t.quantization;
  if (q.scheme == "per_tensor_affine") return at::_empty_affine_quantized({0}, options, q.scale, q.zero_point);
  if (q.scheme == "per_channel_affine") {
    const at::Tensor scales = at::tensor(q.scales, at::kDouble).to(device);
    const at::Tensor zero_points = at::tensor(q.zero_points, at::kLong).to(device);
    return at::_empty_per_channel_affine_quantized({0}, scales, zero_points, q.axis, options);
  }
  return at::empty({0}, options);
}

// Loads model `index`'s skeleton and binds its tensors to `storages`. For
// unwrap: eval mode, no gradients. `as_saved` (for unpack) keeps the training
// flag and requires_grad as they were packed.
torch::jit::Module rebuild_model(const std::shared_ptr<const BlobFile>& blob, size_t index,
                                 const std::vector<c10::Storage>& storages, const c10::Device& device,
                                 bool as_saved = false) {
  const format::ModelEntry& entry = blob->manifest().models[index];
  const std::string where = blob->path() + ": model '" + entry.name + "'";
  if (entry.skeleton.kind != "torchscript") {
    throw Error(ErrorCode::kBadBlob, where + ": skeleton kind '" + entry.skeleton.kind +
                                         "' is not supported by this zcwrap; upgrade zcwrap");
  }
  torch::jit::Module module;
  try {
    std::istringstream in(blob->skeleton(index));
    module = torch::jit::load(in, at::kCPU);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // Most often a blob packed under a newer LibTorch than this one: say
    // which made it and which reads it.
    throw Error(ErrorCode::kBadBlob, where + ": skeleton does not load under libtorch " +
                                         kLibTorchVersion + " (the blob was made by " +
                                         blob->manifest().producer + "; re-pack it with this zcwrap, or unwrap "
                                         "it with a LibTorch at least as new): " + detail::first_line(e));
  }
  size_t next = 0;
  detail::rewrite_tensors(module, [&](const std::string& path, format::TensorKind kind,
                                      const at::Tensor& placeholder) {
    if (next >= entry.tensors.size() || entry.tensors[next].path != path ||
        entry.tensors[next].kind != kind) {
      throw Error(ErrorCode::kBadBlob, where + ": skeleton and manifest disagree at tensor " +
                                           std::to_string(next) + " ('" + path + "')");
    }
    const format::TensorEntry& t = entry.tensors[next++];
    const at::ScalarType dtype = detail::dtype_from_name(t.dtype);
    // Quantized tensors' placeholders hold their integer representation
    // (blobs packed before 0.2 held empty quantized tensors).
    if (placeholder.scalar_type() != dtype && placeholder.scalar_type() != c10::toUnderlying(dtype)) {
      throw Error(ErrorCode::kBadBlob, where + ": tensor '" + path + "' is " + t.dtype +
                                           " in the manifest but not in the skeleton");
    }
    at::Tensor bound = empty_like_entry(t, dtype, device)
                           .set_(storages[t.storage], static_cast<int64_t>(t.storage_offset), t.sizes, t.strides);
    if (as_saved && t.requires_grad) bound.requires_grad_(true);
    return bound;
  });
  if (next != entry.tensors.size()) {
    throw Error(ErrorCode::kBadBlob, where + ": manifest lists " + std::to_string(entry.tensors.size()) +
                                         " tensors, the skeleton holds " + std::to_string(next));
  }
  if (!as_saved) module.eval();
  return module;
}

}  // namespace

// --- Unwrapped ---

torch::jit::Module& Unwrapped::module() {
  if (!state_->standalone) {
    throw Error(ErrorCode::kUsage, "this blob holds a pipeline, not a standalone module; use at(name) "
                                   "with one of: " + join_names(state_->names));
  }
  return state_->modules.front();
}

torch::jit::Module& Unwrapped::at(const std::string& name) {
  for (size_t i = 0; i < state_->names.size(); ++i) {
    if (state_->names[i] == name) return state_->modules[i];
  }
  throw Error(ErrorCode::kUsage, "no model named '" + name + "'; the blob holds: " + join_names(state_->names));
}

std::vector<std::string> Unwrapped::names() const { return state_->names; }
bool Unwrapped::is_standalone_module() const { return state_->standalone; }
const std::string& Unwrapped::device() const { return state_->device; }
const std::vector<std::string>& Unwrapped::warnings() const { return state_->warnings; }
const void* Unwrapped::mapping_data() const { return state_->blob->data(); }
size_t Unwrapped::mapping_size() const { return state_->blob->size(); }

// --- ModelWrapper ---

ModelWrapper ModelWrapper::from_model(const torch::jit::Module& model, const PackOptions& options) {
  std::vector<detail::PackInput> inputs;
  inputs.push_back(owned_copy(options.standalone_name, model));
  return store(detail::prepare_blob(inputs, /*standalone=*/true, options), options);
}

ModelWrapper ModelWrapper::from_pipeline(
    const std::vector<std::pair<std::string, torch::jit::Module>>& models, const PackOptions& options) {
  std::vector<detail::PackInput> inputs;
  for (const auto& [name, module] : models) inputs.push_back(owned_copy(name, module));
  return store(detail::prepare_blob(inputs, /*standalone=*/false, options), options);
}

ModelWrapper ModelWrapper::pack_files(const std::vector<ModelFile>& models, bool standalone,
                                      const std::string& blob_path, const PackOptions& options) {
  auto load_all = [&](bool mapped) {
    std::vector<detail::PackInput> inputs;
    for (const ModelFile& file : models) {
      inputs.push_back(detail::load_model_file(standalone ? options.standalone_name : file.name, file.path, mapped));
    }
    return inputs;
  };
  std::vector<detail::PackInput> inputs = load_all(/*mapped=*/true);
  detail::PreparedBlob blob = detail::prepare_blob(inputs, standalone, options);
  if (blob.unshared_bytes > 0) {
    // Something stayed in a skeleton: it must hold real bytes, not the tags
    // the mapped load leaves in storages it does not reach. Load normally.
    inputs = load_all(/*mapped=*/false);
    blob = detail::prepare_blob(inputs, standalone, options);
  }
  detail::write_blob(blob, blob_path, options.progress);
  return wrapper_for(blob_path, blob);
}

ModelWrapper ModelWrapper::from_actor(const json& config) {
  if (!config.is_object()) bad_config("expected a JSON object");
  auto field = [&](const char* key) -> const json& {
    auto it = config.find(key);
    if (it == config.end()) bad_config(std::string("missing field '") + key + "'");
    return *it;
  };
  const json& version = field("zcwrap_actor");
  if (!version.is_number_integer() || version.get<int64_t>() != kActorVersion) {
    bad_config("unsupported zcwrap_actor version " + version.dump() + " (this zcwrap reads 1)");
  }
  ModelWrapper w;
  try {
    w.blob_path_ = detail::absolute_path(field("blob").get<std::string>());
    const json& size = field("blob_size");
    if (!size.is_number_integer() || (!size.is_number_unsigned() && size.get<int64_t>() < 0)) {
      bad_config("blob_size is not a non-negative integer");
    }
    w.blob_size_ = field("blob_size").get<uint64_t>();
    if (!format::parse_hex64(field("meta_checksum").get<std::string>(), &w.meta_checksum_)) {
      bad_config("meta_checksum is not 16 lower-case hex digits");
    }
    w.standalone_ = field("standalone").get<bool>();
    w.names_ = field("models").get<std::vector<std::string>>();
  } catch (const json::exception& e) {
    bad_config(std::string("a field has the wrong type: ") + e.what());
  }
  // Pin check: the blob named must still be the one the driver packed.
  std::shared_ptr<const BlobFile> blob;
  try {
    blob = BlobFile::open(w.blob_path_);
  } catch (const Error& e) {
    throw Error(e.code() == ErrorCode::kInput ? ErrorCode::kStale : e.code(),
                std::string(e.what()) + " (named by the actor config)");
  }
  if (blob->size() != w.blob_size_ || blob->header().meta_checksum != w.meta_checksum_) {
    throw Error(ErrorCode::kStale,
                w.blob_path_ + ": is not the blob this actor config was made for (config pins " +
                    std::to_string(w.blob_size_) + " bytes, checksum " + format::hex64(w.meta_checksum_) +
                    "; file has " + std::to_string(blob->size()) + " bytes, checksum " +
                    format::hex64(blob->header().meta_checksum) + "); it was re-packed or replaced: "
                    "use the actor config written with it");
  }
  std::vector<std::string> names;
  for (const format::ModelEntry& m : blob->manifest().models) names.push_back(m.name);
  if (names != w.names_ || blob->manifest().standalone != w.standalone_) {
    throw Error(ErrorCode::kStale, w.blob_path_ + ": models differ from those the actor config lists");
  }
  return w;
}

ModelWrapper ModelWrapper::open(const std::string& path) {
  if (detail::starts_with_bytes(path, format::kMagic, format::kMagicFamilyLength)) {
    auto blob = BlobFile::open(path);
    ModelWrapper w;
    w.blob_path_ = detail::absolute_path(path);
    w.blob_size_ = blob->size();
    w.meta_checksum_ = blob->header().meta_checksum;
    w.standalone_ = blob->manifest().standalone;
    for (const format::ModelEntry& m : blob->manifest().models) w.names_.push_back(m.name);
    return w;
  }
  json config;
  try {
    config = json::parse(detail::read_file(path));
  } catch (const json::exception&) {
    throw Error(ErrorCode::kBadBlob, path + ": neither a zcwrap blob nor an actor config (JSON)");
  }
  if (config.is_object() && config.contains("blob") && config["blob"].is_string()) {
    std::string blob = config["blob"].get<std::string>();
    if (!blob.empty() && blob[0] != '/') config["blob"] = detail::parent_dir(path) + "/" + blob;
  }
  try {
    return from_actor(config);
  } catch (const Error& e) {
    throw Error(e.code(), path + ": " + e.what());
  }
}

json ModelWrapper::to_actor() const {
  return {{"zcwrap_actor", kActorVersion},
          {"blob", blob_path_},
          {"blob_size", blob_size_},
          {"meta_checksum", format::hex64(meta_checksum_)},
          {"standalone", standalone_},
          {"models", names_}};
}

Unwrapped ModelWrapper::unwrap(const std::string& device, bool use_fast_load) const {
  UnwrapOptions options;
  options.device = device;
  options.use_fast_load = use_fast_load;
  return unwrap(options);
}

Unwrapped ModelWrapper::unwrap(const UnwrapOptions& options) const {
  const c10::Device target = parse_device(options.device);
  auto blob = BlobFile::open(blob_path_, options.copy_on_write);
  if (blob->size() != blob_size_ || blob->header().meta_checksum != meta_checksum_) {
    throw Error(ErrorCode::kStale, blob_path_ + ": changed since this wrapper was made (re-packed or replaced)");
  }
  const char* verify_env = std::getenv("ZCWRAP_VERIFY");
  if (options.verify || (verify_env != nullptr && std::string(verify_env) == "1")) {
    const std::vector<size_t> bad = blob->bad_storages();
    if (!bad.empty()) {
      throw Error(ErrorCode::kBadBlob, blob_path_ + ": storage " + std::to_string(bad.front()) + " (" +
                                           blob->storage_user(bad.front()) +
                                           ") fails its checksum: the blob is corrupt; re-pack it");
    }
  }
  auto state = std::make_shared<Unwrapped::State>();
  state->warnings = prefetch(*blob, options.prefetch);
  state->blob = blob;
  state->names = names_;
  state->standalone = standalone_;
  state->device = target.str();
  try {
    const std::vector<c10::Storage> storages = make_storages(blob, target, options.use_fast_load);
    for (size_t i = 0; i < blob->manifest().models.size(); ++i) {
      state->modules.push_back(rebuild_model(blob, i, storages, target));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kDevice, blob_path_ + ": cannot place the weights on " + target.str() + ": " +
                                        detail::first_line(e));
  }
  return Unwrapped(std::move(state));
}

void ModelWrapper::unpack(const std::string& output_path, const std::string& model) const {
  auto blob = BlobFile::open(blob_path_);
  if (blob->size() != blob_size_ || blob->header().meta_checksum != meta_checksum_) {
    throw Error(ErrorCode::kStale, blob_path_ + ": changed since this wrapper was made (re-packed or replaced)");
  }
  if (model.empty() && !standalone_) {
    throw Error(ErrorCode::kUsage, blob_path_ + ": holds a pipeline; name the model to unpack (one of: " +
                                       join_names(names_) + ")");
  }
  const int index = model.empty() ? 0 : blob->find_model(model);
  if (index < 0) {
    throw Error(ErrorCode::kUsage, "no model named '" + model + "'; the blob holds: " + join_names(names_));
  }
  const std::string skeleton = blob->skeleton(static_cast<size_t>(index));
  torch::jit::ExtraFilesMap extra_files;
  try {
    std::istringstream in(skeleton);
    caffe2::serialize::PyTorchStreamReader reader(&in);
    for (const std::string& record : reader.getAllRecords()) {
      if (record.rfind("extra/", 0) != 0) continue;
      auto [data, size] = reader.getRecord(record);
      extra_files[record.substr(6)] = std::string(static_cast<const char*>(data.get()), size);
    }
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadBlob, blob_path_ + ": skeleton does not read: " + detail::first_line(e));
  }
  torch::jit::Module module =
      rebuild_model(blob, static_cast<size_t>(index), make_storages(blob, c10::Device(c10::kCPU)),
                    c10::Device(c10::kCPU), /*as_saved=*/true);
  std::ostringstream out;
  try {
    detail::sink_tensor_constants(module);
    module.save(out, extra_files);
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kBadModel, blob_path_ + ": cannot save model '" + names_[index] + "': " +
                                          detail::first_line(e));
  }
  detail::AtomicFile file(output_path);
  const std::string bytes = out.str();
  file.write(bytes.data(), bytes.size());
  file.commit();
}

// --- ActorWrapper ---

ActorWrapper::ActorWrapper(const torch::jit::Module& model, std::string device, const PackOptions& options)
    : wrapper_(ModelWrapper::from_model(model, options)), device_(std::move(device)) {}

ActorWrapper::ActorWrapper(const std::vector<std::pair<std::string, torch::jit::Module>>& models,
                           std::string device, const PackOptions& options)
    : wrapper_(ModelWrapper::from_pipeline(models, options)), device_(std::move(device)) {}

ActorWrapper::ActorWrapper(ModelWrapper wrapper, std::string device)
    : wrapper_(std::move(wrapper)), device_(std::move(device)) {}

Unwrapped ActorWrapper::load() const { return wrapper_.unwrap(device_); }

json ActorWrapper::to_actor() const {
  json config = wrapper_.to_actor();
  config["device"] = device_;
  return config;
}

ActorWrapper ActorWrapper::from_actor(const json& config) {
  if (!config.is_object() || !config.contains("device") || !config["device"].is_string()) {
    throw Error(ErrorCode::kBadBlob, "actor config: missing string field 'device'");
  }
  return ActorWrapper(ModelWrapper::from_actor(config), config["device"].get<std::string>());
}

}  // namespace zcwrap
