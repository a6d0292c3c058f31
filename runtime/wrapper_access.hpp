// What the runtime's own parts (pack, unwrap, unpack, describe, the CLI, the
// Python bridge) may do with a ModelWrapper and an Unwrapped that their users
// may not: pack from any kind of model, reach the blob a wrapper checked, and
// reach an unwrap's state. Internal; torch-free.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blob_file.hpp"
#include "zcwrap/inspect.hpp"
#include "zcwrap/model_wrapper.hpp"

namespace zcwrap::detail {

struct PackInput;

// A pack's wrapper and its summary, made from what was written (a pack does
// not read its blob back).
struct Packed {
  ModelWrapper wrapper;
  BlobInfo summary;  // describe() without tensors or imports
};

struct WrapperAccess {
  // The one pack: prepares `inputs` (which it changes) and writes the blob to
  // `blob_path`, renamed into place when complete, or into the store when
  // `blob_path` is empty, where the wrapper holds the store's lock on it.
  // `pipeline_object`: a Python pipeline object's pickle (kPipeline only).
  static Packed pack(std::vector<PackInput>& inputs, Layout layout, const PackOptions& options,
                     const std::optional<std::string>& pipeline_object = std::nullopt,
                     const std::string& blob_path = "");
  // ModelWrapper::pack_files, with the summary.
  static Packed pack_files(const std::vector<ModelFile>& files, Layout layout, const std::string& blob_path,
                           const PackOptions& options);
  // The blob `wrapper` names, checked against its pins: the mapping that
  // from_actor or open checked (reused, so an operation opens a blob once),
  // the memory of from_memory, or a fresh mapping (a private one for
  // kCopyOnWrite).
  static std::shared_ptr<const BlobFile> checked_blob(const ModelWrapper& wrapper, Access access);
  // A wrapper over a blob already opened and checked (open, from_memory),
  // named `path` (a memory blob's name).
  static ModelWrapper of_blob(std::shared_ptr<const BlobFile> blob, const std::string& path);

  // What a model handle refers to.
  static const UnwrappedModel& model(const Unwrapped::Model& m) { return *m.model_; }
  // The public handle on an unwrap's state, and back.
  static Unwrapped unwrapped(std::shared_ptr<Unwrapped::State> state) { return Unwrapped(std::move(state)); }
  static const std::shared_ptr<Unwrapped::State>& state(const Unwrapped& u) { return u.state_; }
};

inline std::shared_ptr<const BlobFile> checked_blob(const ModelWrapper& wrapper, Access access = Access::kReadOnly) {
  return WrapperAccess::checked_blob(wrapper, access);
}

inline Access access_of(const UnwrapOptions& options) {
  return options.copy_on_write ? Access::kCopyOnWrite : Access::kReadOnly;
}

}  // namespace zcwrap::detail
