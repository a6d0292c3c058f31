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
#include "rebind.hpp"
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

// --- Unwrapped ---

torch::jit::Module& Unwrapped::module() {
  if (!state_->standalone) {
    throw Error(ErrorCode::kUsage, "this blob holds a pipeline, not a standalone module; use at(name) "
                                   "with one of: " + join(state_->names));
  }
  return state_->modules.front();
}

torch::jit::Module& Unwrapped::at(const std::string& name) {
  for (size_t i = 0; i < state_->names.size(); ++i) {
    if (state_->names[i] == name) return state_->modules[i];
  }
  throw Error(ErrorCode::kUsage, "no model named '" + name + "'; the blob holds: " + join(state_->names));
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
  inputs.push_back(detail::copy_module(options.standalone_name, model));
  return detail::stored_wrapper(detail::prepare_blob(inputs, /*standalone=*/true, options), options);
}

ModelWrapper ModelWrapper::from_pipeline(
    const std::vector<std::pair<std::string, torch::jit::Module>>& models, const PackOptions& options) {
  std::vector<detail::PackInput> inputs;
  for (const auto& [name, module] : models) inputs.push_back(detail::copy_module(name, module));
  return detail::stored_wrapper(detail::prepare_blob(inputs, /*standalone=*/false, options), options);
}

ModelWrapper ModelWrapper::pack_files(const std::vector<ModelFile>& models, Layout layout,
                                      const std::string& blob_path, const PackOptions& options) {
  const bool standalone = layout == Layout::kStandalone;
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
  return detail::written_wrapper(blob_path, blob);
}

ModelWrapper detail::WrapperAccess::written(const std::string& path, const detail::PreparedBlob& blob) {
  ModelWrapper w;
  w.blob_path_ = detail::absolute_path(path);
  w.blob_size_ = blob.header.file_size;
  w.meta_checksum_ = blob.header.meta_checksum;
  w.standalone_ = blob.standalone;
  w.names_ = blob.names;
  return w;
}

ModelWrapper detail::WrapperAccess::stored(const detail::PreparedBlob& blob, const PackOptions& options) {
  detail::StoredBlob stored = detail::store_blob(blob, options);
  ModelWrapper w = written_wrapper(stored.path, blob);
  w.store_lock_ = std::move(stored.lock);
  return w;
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
  w.opened_ = std::move(blob);
  return w;
}

ModelWrapper ModelWrapper::from_memory(MemoryBlob memory) {
  ModelWrapper w;
  w.memory_ = BlobFile::open_memory(memory.data, memory.size, std::move(memory.owner), memory.name);
  w.blob_path_ = memory.name;
  w.blob_size_ = w.memory_->size();
  w.meta_checksum_ = w.memory_->header().meta_checksum;
  w.standalone_ = w.memory_->manifest().standalone;
  for (const format::ModelEntry& m : w.memory_->manifest().models) w.names_.push_back(m.name);
  return w;
}

std::shared_ptr<const BlobFile> detail::WrapperAccess::checked_blob(const ModelWrapper& w, bool copy_on_write) {
  if (w.memory_) {
    if (!copy_on_write) return w.memory_;
    // Memory offers no file to map privately: a private, writable copy.
    return BlobFile::open_memory(w.memory_->data(), w.memory_->size(), nullptr, w.blob_path_, /*copy_on_write=*/true);
  }
  if (w.opened_ && !copy_on_write) return w.opened_;
  return BlobFile::open_pinned(w.blob_path_, w.blob_size_, w.meta_checksum_, copy_on_write);
}

ModelWrapper ModelWrapper::open(const std::string& path) {
  // One open: the magic is read through the descriptor that is then mapped.
  struct stat st {};
  detail::UniqueFd fd = detail::open_regular_file(path, &st);
  char magic[format::kMagicFamilyLength] = {};
  if (::pread(fd.get(), magic, sizeof(magic), 0) == static_cast<ssize_t>(sizeof(magic)) &&
      std::equal(magic, magic + sizeof(magic), format::kMagic)) {
    auto blob = BlobFile::open_fd(std::move(fd), st, path);
    ModelWrapper w;
    w.blob_path_ = detail::absolute_path(path);
    w.blob_size_ = blob->size();
    w.meta_checksum_ = blob->header().meta_checksum;
    w.standalone_ = blob->manifest().standalone;
    for (const format::ModelEntry& m : blob->manifest().models) w.names_.push_back(m.name);
    w.opened_ = std::move(blob);
    return w;
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
  auto state = detail::unwrap_blob(detail::checked_blob(*this, options.copy_on_write), options);
  return Unwrapped(std::move(state));
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

Unwrapped ActorWrapper::load(UnwrapOptions options) const {
  options.device = device_;
  return wrapper_.unwrap(options);
}

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
