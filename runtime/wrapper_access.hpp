// What the runtime's own parts (unwrap, unpack, describe, the CLI, the Python
// bridge) may do with a ModelWrapper that its users may not: reach the blob it
// checked, and make one from a blob just written. Internal; torch-free.
#pragma once

#include <memory>
#include <string>

#include "zcwrap/model_wrapper.hpp"

namespace zcwrap::detail {

class BlobFile;
struct PreparedBlob;

struct WrapperAccess {
  // The blob `wrapper` names, checked against its pins: the mapping that
  // from_actor or open checked (reused, so an operation opens a blob once),
  // the memory of from_memory, or a fresh mapping (a private one for
  // copy_on_write).
  static std::shared_ptr<const BlobFile> checked_blob(const ModelWrapper& wrapper, bool copy_on_write);
  // The wrapper of a blob just written to `path` from `blob`: its pins come
  // from what was written, so the file is not mapped and parsed back (a pack
  // must not fail once its blob is in place).
  static ModelWrapper written(const std::string& path, const PreparedBlob& blob);
  // `blob` written into the store (or found there), as a wrapper that holds
  // the store's lock on it.
  static ModelWrapper stored(const PreparedBlob& blob, const PackOptions& options);
  // The store's lock a from_model wrapper holds (null for others): the Python
  // package keeps it beside its own wrapper.
  static std::shared_ptr<const void> store_lock(const ModelWrapper& wrapper) { return wrapper.store_lock_; }
};

inline std::shared_ptr<const BlobFile> checked_blob(const ModelWrapper& wrapper, bool copy_on_write = false) {
  return WrapperAccess::checked_blob(wrapper, copy_on_write);
}
inline ModelWrapper written_wrapper(const std::string& path, const PreparedBlob& blob) {
  return WrapperAccess::written(path, blob);
}
inline ModelWrapper stored_wrapper(const PreparedBlob& blob, const PackOptions& options) {
  return WrapperAccess::stored(blob, options);
}
inline std::shared_ptr<const void> store_lock(const ModelWrapper& wrapper) {
  return WrapperAccess::store_lock(wrapper);
}

}  // namespace zcwrap::detail
