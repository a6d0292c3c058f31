// ModelWrapper, ActorWrapper and Unwrapped: pack models (TorchScript modules,
// AOTInductor packages; eager modules and torch.export programs from the
// Python package) into a blob once, rebuild them zero-copy in every worker.
//
// This header does not include LibTorch (it is heavy to compile): code that
// calls module() or passes a torch::jit::Module includes <torch/script.h>
// itself.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "zcwrap/options.hpp"

namespace torch::jit {
struct Module;
}  // namespace torch::jit
namespace at {
class Tensor;
}  // namespace at
namespace c10 {
struct IValue;
}  // namespace c10

namespace zcwrap {

class ModelWrapper;

namespace detail {
class BlobFile;
struct ActorConfig;
struct WrapperAccess;  // the runtime's own access (runtime/wrapper_access.hpp)
struct UnwrappedModel;
}  // namespace detail

/// The models rebuilt from a blob, ready to run.
///
/// On "cpu" every shared tensor points into one read-only MAP_SHARED mapping
/// of the blob, so the weights take no memory of their own and all workers
/// on a machine share one copy in the page cache. The mapping stays alive as
/// long as any tensor made from it (the modules included), even after this
/// object and the blob file are gone. Writing to such a tensor in place
/// faults (SIGSEGV): the weights are read-only by design.
///
/// Modules come back in eval mode, tensors with requires_grad false; run
/// them under torch::NoGradGuard or torch::InferenceMode. Copies share the
/// same models. Like torch::jit::Module, not synchronized: threads may run
/// the models concurrently but must not mutate them.
class Unwrapped {
 public:
  struct State;  ///< implementation detail

  /// One model of the blob, whatever its skeleton kind. A handle: copies
  /// refer to the same model, which lives as long as any handle on it.
  class Model {
   public:
    const std::string& name() const;
    /// The skeleton kind, as the manifest names it: "torchscript",
    /// "aot_inductor" (an AOTInductor package), or a kind the Python package
    /// rebuilds ("python_pickle", "torch_export").
    const std::string& kind() const;
    bool is_torchscript() const;
    /// The TorchScript module. Throws Error(kUsage) for another kind.
    torch::jit::Module& module();
    /// Every tensor the blob holds for this model, in the manifest's order,
    /// over the placed storages.
    const std::vector<at::Tensor>& tensors() const;
    /// Runs the model on `inputs` and returns its output, whatever its kind:
    /// a TorchScript module's forward, an AOTInductor model's run (tensors,
    /// tuples and lists of them flattened in; one tensor, or a tuple of
    /// several, out). Throws Error(kUsage) for a kind that runs in Python
    /// only; what the model throws passes through.
    c10::IValue run(std::vector<c10::IValue> inputs);

   private:
    friend struct detail::WrapperAccess;
    friend class Unwrapped;
    Model(std::shared_ptr<State> state, detail::UnwrappedModel* model)
        : state_(std::move(state)), model_(model) {}
    std::shared_ptr<State> state_;
    detail::UnwrappedModel* model_;  // inside *state_
  };

  /// The standalone model. Throws Error(kUsage) for a pipeline.
  Model model() const;
  /// One model of a pipeline, or the standalone one, by its name. Throws
  /// Error(kUsage) listing the names when there is no such model.
  Model model(const std::string& name) const;
  /// Every model, in pack order.
  std::vector<Model> models() const;
  /// model().module(): the standalone TorchScript module.
  torch::jit::Module& module();
  /// model(name).module(): a TorchScript model by its name.
  torch::jit::Module& at(const std::string& name);
  /// Model names in pack order.
  std::vector<std::string> names() const;
  bool is_standalone_module() const;
  /// The device the tensors live on ("cpu", "cuda:0", ...).
  const std::string& device() const;
  /// Start and size of the read-only mapping of the blob; CPU tensors made
  /// from it point inside [mapping_data(), mapping_data() + mapping_size()).
  const void* mapping_data() const;
  size_t mapping_size() const;
  /// Things that did not go as asked but did not stop the unwrap (mlock
  /// refused, huge pages unavailable), one line each.
  const std::vector<std::string>& warnings() const;

 private:
  friend class ModelWrapper;
  friend struct detail::WrapperAccess;
  explicit Unwrapped(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

/// A handle on a packed blob: small, copyable, safe to send to workers as
/// JSON (to_actor / from_actor). Holds no mapping itself.
class ModelWrapper {
 public:
  /// Packs one in-memory module into the store folder (see PackOptions) under
  /// a name derived from its content, so the same model is stored once. A
  /// blob already there under that name is reused only when every byte
  /// (header, manifest, skeletons and weights) is what this pack would
  /// write; otherwise it is replaced. The module is not changed. The wrapper
  /// (and its copies) holds a shared lock on the blob while it lives, so
  /// zcwrap::gc() leaves it, and every blob a process maps, in place.
  /// Throws Error(kWrite) when the store has no room (it names ZCWRAP_STORE),
  /// Error(kBadModel) when the module cannot be serialized.
  static ModelWrapper from_model(const torch::jit::Module& model, const PackOptions& options = {});

  /// Like from_model for a pipeline of named modules; tensors that hold the
  /// same bytes (tied across models) are stored once. Throws Error(kUsage)
  /// for an empty list, an invalid or duplicate name.
  static ModelWrapper from_pipeline(
      const std::vector<std::pair<std::string, torch::jit::Module>>& models,
      const PackOptions& options = {});

  /// Packs TorchScript files into the blob at `blob_path` (what `zcwrap pack`
  /// does): written beside it and renamed into place when complete. With
  /// Layout::kStandalone, `models` holds one file and its name is ignored for
  /// options.standalone_name. Throws Error(kInput / kBadModel / kUsage /
  /// kWrite) naming the file at fault.
  static ModelWrapper pack_files(const std::vector<ModelFile>& models, Layout layout,
                                 const std::string& blob_path, const PackOptions& options = {});

  /// Opens what to_actor() produced. Checks that the blob exists and still
  /// has the size and meta checksum the config pins; throws Error(kStale)
  /// when it was replaced or truncated, Error(kBadBlob) for a malformed
  /// config. A relative "blob" path is taken relative to the current folder.
  /// The wrapper keeps the mapping it checked, and unwrap() and unpack() use
  /// it: the blob is opened once, and what they read is the blob the pins
  /// name even if the file is replaced in between (a copy_on_write unwrap
  /// maps the file afresh, and checks the pins again).
  static ModelWrapper from_actor(const nlohmann::json& actor_config);

  /// A wrapper over a blob in memory (see MemoryBlob), checked as from_actor
  /// checks a file: header, meta checksum, manifest. unwrap() and unpack()
  /// read that memory; to_actor() throws Error(kUsage), since memory has no
  /// path to send (send the memory, then call from_memory where it arrives).
  /// Throws Error(kBadBlob) when the bytes are not a valid blob or `data` is
  /// not 64-byte aligned.
  static ModelWrapper from_memory(MemoryBlob blob);

  /// Opens a blob file, or an actor config file (JSON; a relative "blob" path
  /// in it is taken relative to the config's folder).
  static ModelWrapper open(const std::string& blob_or_config_path);

  /// The actor config: {"zcwrap_actor": 1, "blob": absolute path, "blob_size",
  /// "meta_checksum", "standalone", "models": [...]}. Small; send it to workers.
  nlohmann::json to_actor() const;

  /// Rebuilds the models from the blob (the mapping from_actor or open
  /// checked, a fresh one for a wrapper made by packing, or the memory of
  /// from_memory). "cpu": zero-copy (see
  /// Unwrapped). Another device ("cuda:0"): each storage is copied once, so
  /// aliasing survives. With `use_fast_load` on a CUDA device the whole data
  /// section goes to one device allocation instead, streamed in large chunks
  /// through pinned buffers filled on several threads, and every tensor is a
  /// view of it (same dtype, sizes, strides, offset and aliasing); the
  /// allocation lives as long as any of its tensors. It needs a zcwrap built
  /// with meson -Dcuda; without that it takes the per-storage path, and on
  /// "cpu" it changes nothing. Throws Error(kDevice)
  /// for a device that does not exist or has no room, Error(kBadBlob) /
  /// Error(kStale) for a blob that fails its checks. Thread-safe.
  /// A model packed from Python as an eager nn.Module cannot be rebuilt here:
  /// Error(kBadModel) says to unwrap it from the Python package.
  Unwrapped unwrap(const std::string& device = "cpu", bool use_fast_load = false) const;
  /// As above, with the cold-start, verification and copy-on-write choices.
  /// Throws Error(kBadBlob) naming the first tensor whose bytes fail their
  /// checksum when verifying.
  Unwrapped unwrap(const UnwrapOptions& options) const;

  /// Writes one model back as a standard TorchScript file (what
  /// torch.jit.save writes) that torch.jit.load and torch::jit::load open:
  /// same methods, attributes, extra files, training flag and requires_grad
  /// as packed; a frozen model's constants become constants again. `model`
  /// may be empty for a standalone blob. Written beside `output_path` and
  /// renamed into place. Throws Error(kUsage) for an unknown or missing
  /// model name, Error(kWrite) when the file cannot be written.
  void unpack(const std::string& output_path, const std::string& model = "") const;

  bool is_standalone_module() const { return standalone_; }
  std::vector<std::string> model_names() const { return names_; }
  /// Each model's skeleton kind as the manifest names it ("torchscript",
  /// "aot_inductor", "python_pickle", "torch_export"), in model_names() order.
  const std::vector<std::string>& model_kinds() const { return kinds_; }
  /// The blob file's absolute path; for a memory blob, its name.
  const std::string& blob_path() const { return blob_path_; }
  bool in_memory() const { return memory_ != nullptr; }
  uint64_t blob_size() const { return blob_size_; }
  uint64_t meta_checksum() const { return meta_checksum_; }

 private:
  ModelWrapper() = default;
  friend class ActorWrapper;
  friend struct detail::WrapperAccess;

  // from_actor and open, once the config is parsed: the pin check.
  static ModelWrapper from_config(const detail::ActorConfig& config);

  std::shared_ptr<const detail::BlobFile> memory_;  // from_memory only
  // from_model/from_pipeline: the store blob's descriptor, holding its lock.
  std::shared_ptr<const void> store_lock_;
  // The mapping from_actor or open checked; unwrap and unpack reuse it.
  std::shared_ptr<const detail::BlobFile> opened_;
  std::string blob_path_;
  uint64_t blob_size_ = 0;
  uint64_t meta_checksum_ = 0;
  bool standalone_ = false;
  std::vector<std::string> names_;
  std::vector<std::string> kinds_;
};

/// ray-zerocopy's primary API, in C++: wrap a model (or pipeline) once in
/// the driver with the device its workers use, send to_actor() to each
/// worker, and call from_actor(config).load() there. The Python package's
/// ActorWrapper reads and writes the same configs.
class ActorWrapper {
 public:
  /// Packs `model` like ModelWrapper::from_model. Throws as that does.
  explicit ActorWrapper(const torch::jit::Module& model, std::string device = "cpu", bool use_fast_load = false,
                        const PackOptions& options = {});
  /// Packs a pipeline like ModelWrapper::from_pipeline.
  explicit ActorWrapper(const std::vector<std::pair<std::string, torch::jit::Module>>& models,
                        std::string device = "cpu", bool use_fast_load = false, const PackOptions& options = {});
  explicit ActorWrapper(ModelWrapper wrapper, std::string device = "cpu", bool use_fast_load = false);

  /// Unwraps onto the device (and with use_fast_load) given at wrap time.
  Unwrapped load() const;
  /// As load(), with the other unwrap choices; options.device and
  /// options.use_fast_load are replaced by those given at wrap time.
  Unwrapped load(UnwrapOptions options) const;
  /// ModelWrapper::to_actor() plus "device" and "use_fast_load".
  nlohmann::json to_actor() const;
  /// Throws as ModelWrapper::from_actor, and Error(kBadBlob) for a "device"
  /// that is not a string or a "use_fast_load" that is not a bool; each
  /// defaults as in the constructor when absent.
  static ActorWrapper from_actor(const nlohmann::json& actor_config);

  const ModelWrapper& wrapper() const { return wrapper_; }
  const std::string& device() const { return device_; }
  bool use_fast_load() const { return use_fast_load_; }

 private:
  ModelWrapper wrapper_;
  std::string device_;
  bool use_fast_load_ = false;
};

}  // namespace zcwrap
