// Test helpers that need LibTorch: reference outputs and bit-for-bit checks.
#pragma once

// c10 logs through glog, whose CHECK* macros would replace doctest's (a
// failed CHECK would then abort the run instead of being reported). So this
// header comes first: LibTorch, then glog's names dropped, then doctest.
#ifdef DOCTEST_LIBRARY_INCLUDED
#error "include torch_support.hpp before doctest.h"
#endif
#include <torch/script.h>
#undef CHECK
#undef CHECK_EQ
#undef CHECK_NE
#undef CHECK_LT
#undef CHECK_LE
#undef CHECK_GT
#undef CHECK_GE
#include <doctest/doctest.h>

#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"
#include "zcwrap/zcwrap.hpp"

namespace zcwrap::test {

// Every byte of two values equal, recursively through tuples and lists;
// `why` says where they first differ.
inline bool bit_equal(const c10::IValue& a, const c10::IValue& b, std::string* why, const std::string& at = "result") {
  if (a.isTensor() && b.isTensor() && (a.toTensor().is_quantized() || b.toTensor().is_quantized())) {
    const at::Tensor x = a.toTensor().cpu(), y = b.toTensor().cpu();
    if (!x.is_quantized() || !y.is_quantized() || x.scalar_type() != y.scalar_type() || x.qscheme() != y.qscheme()) {
      *why = at + ": quantization differs";
      return false;
    }
    const bool same_params = x.qscheme() == at::kPerTensorAffine
                                 ? x.q_scale() == y.q_scale() && x.q_zero_point() == y.q_zero_point()
                                 : x.q_per_channel_axis() == y.q_per_channel_axis() &&
                                       at::equal(x.q_per_channel_scales(), y.q_per_channel_scales()) &&
                                       at::equal(x.q_per_channel_zero_points(), y.q_per_channel_zero_points());
    if (!same_params) {
      *why = at + ": quantization parameters differ";
      return false;
    }
    return bit_equal(x.int_repr(), y.int_repr(), why, at + ".int_repr()");
  }
  if (a.isTensor() && b.isTensor()) {
    const at::Tensor x = a.toTensor().contiguous().cpu();
    const at::Tensor y = b.toTensor().contiguous().cpu();
    if (x.scalar_type() != y.scalar_type() || x.sizes() != y.sizes()) {
      *why = at + ": dtype or shape differs";
      return false;
    }
    if (std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) != 0) {
      *why = at + ": bytes differ";
      return false;
    }
    return true;
  }
  if (a.isTuple() && b.isTuple()) {
    const auto& x = a.toTupleRef().elements();
    const auto& y = b.toTupleRef().elements();
    if (x.size() != y.size()) {
      *why = at + ": tuple sizes differ";
      return false;
    }
    for (size_t i = 0; i < x.size(); ++i) {
      if (!bit_equal(x[i], y[i], why, at + "[" + std::to_string(i) + "]")) return false;
    }
    return true;
  }
  if (a.isList() && b.isList()) {
    return bit_equal(c10::ivalue::Tuple::create(a.toList().vec()), c10::ivalue::Tuple::create(b.toList().vec()),
                     why, at);
  }
  if (a == b) return true;
  *why = at + ": values differ";
  return false;
}

inline c10::IValue load_value(const std::string& path) {
  const std::string bytes = read_bytes(path);
  return torch::jit::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
}

inline std::vector<c10::IValue> load_inputs(const std::string& path) {
  c10::IValue v = load_value(path);
  if (v.isTuple()) return v.toTupleRef().elements().vec();
  return {v};
}

inline c10::IValue call(torch::jit::Module& module, const std::string& method, std::vector<c10::IValue> inputs) {
  torch::NoGradGuard no_grad;
  return module.get_method(method)(std::move(inputs));
}

// The reference: torch::jit::load of the original file, in eval mode.
inline c10::IValue reference_output(const std::string& model_path, const std::string& method,
                                    const std::string& input_path) {
  torch::jit::Module module = torch::jit::load(model_path);
  module.eval();
  return call(module, method, load_inputs(input_path));
}

inline bool points_into(const at::Tensor& t, const Unwrapped& u) {
  const auto* p = static_cast<const uint8_t*>(t.storage().data_ptr().get());
  const auto* base = static_cast<const uint8_t*>(u.mapping_data());
  return p >= base && p + t.storage().nbytes() <= base + u.mapping_size();
}

}  // namespace zcwrap::test
