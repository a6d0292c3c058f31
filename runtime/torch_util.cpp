#include "torch_util.hpp"

#include <unordered_set>

#include "constants.hpp"

namespace zcwrap::detail {

std::string dtype_name(at::ScalarType type) {
  for (const format::Dtype& d : format::kDtypes) {
    if (d.torch_code == static_cast<int>(type)) return std::string(d.name);
  }
  return {};
}

at::ScalarType dtype_from_name(const std::string& name) {
  const format::Dtype* d = format::find_dtype(name);
  if (d == nullptr) throw std::invalid_argument("unknown dtype " + name);  // the manifest check rules this out
  return static_cast<at::ScalarType>(d->torch_code);
}

bool is_shareable(const at::Tensor& t) {
  // A nested tensor's layout reads kStrided, but it has no sizes or strides
  // to record ("NestedTensorImpl doesn't support sizes").
  if (!t.defined() || t.is_nested() || t.layout() != at::kStrided || !t.device().is_cpu() || t.is_mkldnn() ||
      t.is_conj() || t.is_neg() || !t.has_storage() || dtype_name(t.scalar_type()).empty()) {
    return false;
  }
  // Quantized: the affine schemes, whose parameters the manifest records.
  return !t.is_quantized() || t.qscheme() == at::kPerTensorAffine || t.qscheme() == at::kPerChannelAffine;
}


}  // namespace zcwrap::detail
