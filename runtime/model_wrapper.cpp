#include "zcwrap/model_wrapper.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <sstream>

#include <nlohmann/json.hpp>

#include "actor_config.hpp"
#include "blob_file.hpp"
#include "constants.hpp"
#include "pack.hpp"
#include "placement.hpp"
#include "unwrap.hpp"
#include "describe.hpp"
#include "store.hpp"
#include "text.hpp"
#include "wrapper_access.hpp"
#include "torch_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/version.hpp"

namespace zcwrap {

using detail::BlobFile;
using nlohmann::json;

using detail::join;

namespace {

std::vector<std::string> kinds_of(const BlobFile& blob) {
  std::vector<std::string> kinds;
  for (const format::ModelEntry& m : blob.manifest().models) kinds.push_back(m.skeleton.kind);
  return kinds;
}

}  // namespace

// --- ModelWrapper ---

ModelWrapper ModelWrapper::from_model(const torch::jit::Module& model, const PackOptions& options) {
  std::vector<detail::PackInput> inputs;
  inputs.push_back(detail::copy_module(options.standalone_name, model));
  return detail::WrapperAccess::pack(inputs, Layout::kStandalone, options).wrapper;
}

ModelWrapper ModelWrapper::from_pipeline(
    const std::vector<std::pair<std::string, torch::jit::Module>>& models, const PackOptions& options) {
  std::vector<detail::PackInput> inputs;
  for (const auto& [name, module] : models) inputs.push_back(detail::copy_module(name, module));
  return detail::WrapperAccess::pack(inputs, Layout::kPipeline, options).wrapper;
}

ModelWrapper ModelWrapper::pack_files(const std::vector<ModelFile>& models, Layout layout,
                                      const std::string& blob_path, const PackOptions& options) {
  return detail::WrapperAccess::pack_files(models, layout, blob_path, options).wrapper;
}

detail::Packed detail::WrapperAccess::pack_files(const std::vector<ModelFile>& files, Layout layout,
                                                 const std::string& blob_path, const PackOptions& options) {
  std::vector<PackInput> inputs = load_model_files(files, layout, options);
  // One file that holds several models (an AOTInductor package of several)
  // is a pipeline of them.
  if (layout == Layout::kStandalone && inputs.size() > 1) layout = Layout::kPipeline;
  return pack(inputs, layout, options, std::nullopt, blob_path);
}

detail::Packed detail::WrapperAccess::pack(std::vector<PackInput>& inputs, Layout layout, const PackOptions& options,
                                           const std::optional<std::string>& pipeline_object,
                                           const std::string& blob_path) {
  const PreparedBlob blob = prepare_blob(inputs, layout, options, pipeline_object);
  ModelWrapper w;
  if (blob_path.empty()) {
    StoredBlob stored = store_blob(blob, options);
    w.blob_path_ = stored.path;
    w.store_lock_ = std::move(stored.lock);
  } else {
    write_blob(blob, blob_path, options.progress);
    w.blob_path_ = absolute_path(blob_path);
  }
  // The pins come from what was written: the file is not mapped and parsed
  // back (a pack must not fail once its blob is in place).
  w.blob_size_ = blob.header.file_size;
  w.meta_checksum_ = blob.header.meta_checksum;
  w.standalone_ = blob.layout == Layout::kStandalone;
  w.names_ = blob.names;
  for (format::SkeletonKind kind : blob.kinds) w.kinds_.push_back(format::skeleton_kind_name(kind));
  BlobInfo summary = describe_layout(blob.header, blob.parsed, w.blob_path_, {}, {.tensors = false});
  return {std::move(w), std::move(summary)};
}

ModelWrapper ModelWrapper::from_actor(const json& config) { return from_config(detail::parse_actor_config(config)); }

ModelWrapper ModelWrapper::from_config(const detail::ActorConfig& config) {
  ModelWrapper w;
  w.blob_path_ = config.blob;
  w.blob_size_ = config.blob_size;
  w.meta_checksum_ = config.meta_checksum;
  w.standalone_ = config.standalone;
  w.names_ = config.models;
  // Pin check: the blob named must still be the one the driver packed.
  std::shared_ptr<const BlobFile> blob;
  try {
    blob = BlobFile::open(w.blob_path_);
  } catch (const Error& e) {
    throw Error(e.code() == ErrorCode::kInput ? ErrorCode::kStale : e.code(),
                std::string(e.what()) + " (named by the actor config)");
  }
  detail::check_pins(*blob, {w.blob_size_, w.meta_checksum_}, "this actor config");
  std::vector<std::string> names;
  for (const format::ModelEntry& m : blob->manifest().models) names.push_back(m.name);
  if (names != w.names_ || blob->manifest().standalone != w.standalone_) {
    throw Error(ErrorCode::kStale, w.blob_path_ + ": models differ from those the actor config lists");
  }
  w.kinds_ = kinds_of(*blob);
  w.opened_ = std::move(blob);
  return w;
}

ModelWrapper detail::WrapperAccess::of_blob(std::shared_ptr<const BlobFile> blob, const std::string& path) {
  ModelWrapper w;
  w.blob_path_ = path;
  w.blob_size_ = blob->size();
  w.meta_checksum_ = blob->header().meta_checksum;
  w.standalone_ = blob->manifest().standalone;
  for (const format::ModelEntry& m : blob->manifest().models) w.names_.push_back(m.name);
  w.kinds_ = kinds_of(*blob);
  (blob->in_memory() ? w.memory_ : w.opened_) = std::move(blob);
  return w;
}

ModelWrapper ModelWrapper::from_memory(MemoryBlob memory) {
  return detail::WrapperAccess::of_blob(
      BlobFile::open_memory(memory.data, memory.size, std::move(memory.owner), memory.name), memory.name);
}

std::shared_ptr<const BlobFile> detail::WrapperAccess::checked_blob(const ModelWrapper& w, Access access) {
  if (w.memory_) {
    if (access == Access::kReadOnly) return w.memory_;
    // Memory offers no file to map privately: a private, writable copy.
    return BlobFile::open_memory(w.memory_->data(), w.memory_->size(), nullptr, w.blob_path_, access);
  }
  if (w.opened_ && access == Access::kReadOnly) return w.opened_;
  return BlobFile::open_pinned(w.blob_path_, {w.blob_size_, w.meta_checksum_}, access);
}

ModelWrapper ModelWrapper::open(const std::string& path) {
  // One open: the magic is read through the descriptor that is then mapped.
  struct stat st {};
  detail::UniqueFd fd = detail::open_regular_file(path, &st);
  char magic[format::kMagicFamilyLength] = {};
  if (::pread(fd.get(), magic, sizeof(magic), 0) == static_cast<ssize_t>(sizeof(magic)) &&
      std::equal(magic, magic + sizeof(magic), format::kMagic)) {
    return detail::WrapperAccess::of_blob(BlobFile::open_fd(std::move(fd), st, path), detail::absolute_path(path));
  }
  json config;
  try {
    config = json::parse(detail::read_actor_config(path));
  } catch (const json::exception&) {
    throw Error(ErrorCode::kBadBlob, path + ": neither a zcwrap blob nor an actor config (JSON)");
  }
  try {
    return from_config(detail::parse_actor_config(config, detail::parent_dir(path)));
  } catch (const Error& e) {
    throw Error(e.code(), path + ": " + e.what());
  }
}

json ModelWrapper::to_actor() const {
  if (memory_) {
    throw Error(ErrorCode::kUsage, blob_path_ + ": a blob in memory has no actor config; send the memory and "
                                                "call from_memory where it arrives");
  }
  return detail::actor_config_json({blob_path_, blob_size_, meta_checksum_, standalone_, names_});
}

Unwrapped ModelWrapper::unwrap(const std::string& device, bool use_fast_load) const {
  UnwrapOptions options;
  options.device = device;
  options.use_fast_load = use_fast_load;
  return unwrap(options);
}

Unwrapped ModelWrapper::unwrap(const UnwrapOptions& options) const {
  return Unwrapped(detail::unwrap_blob(detail::checked_blob(*this, detail::access_of(options)), options));
}

// --- ActorWrapper ---

ActorWrapper::ActorWrapper(const torch::jit::Module& model, std::string device, bool use_fast_load,
                           const PackOptions& options)
    : ActorWrapper(ModelWrapper::from_model(model, options), std::move(device), use_fast_load) {}

ActorWrapper::ActorWrapper(const std::vector<std::pair<std::string, torch::jit::Module>>& models,
                           std::string device, bool use_fast_load, const PackOptions& options)
    : ActorWrapper(ModelWrapper::from_pipeline(models, options), std::move(device), use_fast_load) {}

ActorWrapper::ActorWrapper(ModelWrapper wrapper, std::string device, bool use_fast_load)
    : wrapper_(std::move(wrapper)), device_(std::move(device)), use_fast_load_(use_fast_load) {}

Unwrapped ActorWrapper::load() const { return load(UnwrapOptions{}); }

Unwrapped ActorWrapper::load(UnwrapOptions options) const {
  options.device = device_;
  options.use_fast_load = use_fast_load_;
  return wrapper_.unwrap(options);
}

json ActorWrapper::to_actor() const {
  json config = wrapper_.to_actor();
  config["device"] = device_;
  config["use_fast_load"] = use_fast_load_;
  return config;
}

ActorWrapper ActorWrapper::from_actor(const json& config) {
  std::string device = "cpu";
  bool use_fast_load = false;
  if (config.is_object() && config.contains("device")) {
    if (!config["device"].is_string()) throw Error(ErrorCode::kBadBlob, "actor config: 'device' must be a string");
    device = config["device"].get<std::string>();
  }
  if (config.is_object() && config.contains("use_fast_load")) {
    if (!config["use_fast_load"].is_boolean()) {
      throw Error(ErrorCode::kBadBlob, "actor config: 'use_fast_load' must be true or false");
    }
    use_fast_load = config["use_fast_load"].get<bool>();
  }
  return ActorWrapper(ModelWrapper::from_actor(config), std::move(device), use_fast_load);
}

}  // namespace zcwrap
