#include "unwrap.hpp"

#include <cstdlib>

#include "placement.hpp"
#include "prefetch.hpp"
#include "rebind.hpp"
#include "text.hpp"
#include "torch_util.hpp"
#include "messages.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap {

// --- Unwrapped and its models ---

const std::string& Unwrapped::Model::name() const { return model_->name; }
const std::string& Unwrapped::Model::kind() const { return model_->kind_name; }
bool Unwrapped::Model::is_torchscript() const { return std::holds_alternative<torch::jit::Module>(model_->built); }
const std::vector<at::Tensor>& Unwrapped::Model::tensors() const { return model_->tensors; }

torch::jit::Module& Unwrapped::Model::module() {
  if (auto* module = std::get_if<torch::jit::Module>(&model_->built)) return *module;
  throw Error(ErrorCode::kUsage, "model '" + model_->name + "' is not TorchScript (skeleton kind " +
                                     model_->kind_name + "); call run() to run it");
}

c10::IValue Unwrapped::Model::run(std::vector<c10::IValue> inputs) {
  return std::visit(
      [&](auto& built) -> c10::IValue {
        using T = std::decay_t<decltype(built)>;
        if constexpr (std::is_same_v<T, torch::jit::Module>) {
          return built.forward(std::move(inputs));
        } else if constexpr (std::is_same_v<T, std::shared_ptr<detail::AotiModel>>) {
          return detail::run_aoti(*built, model_->name, std::move(inputs));
        } else {
          throw Error(ErrorCode::kUsage, "model '" + model_->name + "' (skeleton kind " + model_->kind_name +
                                             ") runs in Python only");
        }
      },
      model_->built);
}

Unwrapped::Model Unwrapped::model() const {
  if (!state_->standalone) {
    throw Error(ErrorCode::kUsage, "this blob holds a pipeline, not a standalone module; use at(name) "
                                   "with one of: " + detail::join(names()));
  }
  return Model(state_, &state_->models.front());
}

Unwrapped::Model Unwrapped::model(const std::string& name) const {
  for (detail::UnwrappedModel& m : state_->models) {
    if (m.name == name) return Model(state_, &m);
  }
  throw Error(ErrorCode::kUsage, "no model named '" + name + "'; the blob holds: " + detail::join(names()));
}

std::vector<Unwrapped::Model> Unwrapped::models() const {
  std::vector<Model> out;
  for (detail::UnwrappedModel& m : state_->models) out.push_back(Model(state_, &m));
  return out;
}

torch::jit::Module& Unwrapped::module() { return model().module(); }
torch::jit::Module& Unwrapped::at(const std::string& name) { return model(name).module(); }

std::vector<std::string> Unwrapped::names() const {
  std::vector<std::string> out;
  for (const detail::UnwrappedModel& m : state_->models) out.push_back(m.name);
  return out;
}

bool Unwrapped::is_standalone_module() const { return state_->standalone; }
const std::string& Unwrapped::device() const { return state_->device; }
const std::vector<std::string>& Unwrapped::warnings() const { return state_->warnings; }
const void* Unwrapped::mapping_data() const { return state_->blob->data(); }
size_t Unwrapped::mapping_size() const { return state_->blob->size(); }

namespace detail {
namespace {

// Checks every storage's checksum: Error(kBadBlob) naming the first that fails.
void verify_storages(const BlobFile& blob) {
  const std::vector<size_t> bad = blob.bad_storages();
  if (!bad.empty()) {
    throw Error(ErrorCode::kBadBlob, blob.path() + ": storage " + std::to_string(bad.front()) + " (" +
                                         blob.storage_user(bad.front()) +
                                         ") fails its checksum: the blob is corrupt; re-pack it");
  }
}

// The one switch over skeleton kinds: model `index` rebuilt around the
// placed storages as its kind says.
UnwrappedModel build_model(const BlobFile& blob, size_t index, const std::vector<c10::Storage>& storages,
                           const c10::Device& device) {
  const format::ModelEntry& entry = blob.manifest().models[index];
  UnwrappedModel model{entry.name, format::skeleton_kind(entry.skeleton.kind), entry.skeleton.kind, {},
                       PythonSkeleton{}};
  switch (model.kind) {
    case format::SkeletonKind::kTorchScript:
      model.built = rebuild_module(blob, index, storages, device, Flags::kInference, &model.tensors);
      break;
    case format::SkeletonKind::kPythonPickle:
    case format::SkeletonKind::kTorchExport:
      model.tensors = bind_tensors(blob, index, storages, device);
      model.built = PythonSkeleton{blob.skeleton(index)};
      break;
    case format::SkeletonKind::kAotInductor:
      model.tensors = bind_tensors(blob, index, storages, device);
      model.built = AotiModel::load(blob, index, model.tensors, device);
      break;
    case format::SkeletonKind::kUnknown:
      throw Error(ErrorCode::kBadBlob, blob.path() + ": model '" + entry.name + "': skeleton kind '" +
                                           entry.skeleton.kind + "' is not supported by this zcwrap; upgrade zcwrap");
  }
  return model;
}

}  // namespace

std::shared_ptr<Unwrapped::State> unwrap_blob(const std::shared_ptr<const BlobFile>& blob,
                                              const UnwrapOptions& options, PythonKinds python) {
  const c10::Device target = parse_device(options.device);
  const format::Manifest& manifest = blob->manifest();
  for (size_t i = 0; i < manifest.models.size(); ++i) {
    const format::SkeletonKind kind = format::skeleton_kind(manifest.models[i].skeleton.kind);
    if (kind != format::SkeletonKind::kUnknown && format::skeleton_kind_info(kind).rebuilt_in_python &&
        python == PythonKinds::kRefuse) {
      throw needs_python(*blob, i);
    }
  }
  const char* verify_env = std::getenv("ZCWRAP_VERIFY");
  if (options.verify || (verify_env != nullptr && std::string(verify_env) == "1")) verify_storages(*blob);

  auto state = std::make_shared<Unwrapped::State>();
  state->warnings = prefetch(*blob, options.prefetch);
  state->blob = blob;
  state->standalone = manifest.standalone;
  state->device = target.str();
  if (python == PythonKinds::kBind) state->pipeline_object = blob->pipeline_pickle();
  try {
    const std::vector<c10::Storage> storages = make_storages(blob, target, options.use_fast_load);
    state->models.reserve(manifest.models.size());
    for (size_t i = 0; i < manifest.models.size(); ++i) state->models.push_back(build_model(*blob, i, storages, target));
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kDevice,
                blob->path() + ": cannot place the weights on " + target.str() + ": " + first_line(e));
  }
  return state;
}

}  // namespace detail
}  // namespace zcwrap
