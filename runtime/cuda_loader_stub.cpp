// The CUDA loader's stand-in for builds without it (meson -Dcuda, or a
// LibTorch without CUDA): runtime/cuda_loader.cpp defines the same functions.
#include "placement.hpp"
#include "zcwrap/error.hpp"

namespace zcwrap::detail {

bool fast_load_built() { return false; }

std::vector<c10::Storage> fast_load_storages(const BlobFile& blob, const c10::Device& device,
                                             const FastLoadOptions&) {
  throw Error(ErrorCode::kDevice, blob.path() + ": fast load to " + device.str() +
                                      ": this zcwrap was built without its CUDA loader; rebuild it with "
                                      "meson -Dcuda=enabled against a CUDA LibTorch");
}

}  // namespace zcwrap::detail
