// What a worker reports of a model's output: a digest that is equal only for
// bit-equal outputs, and a short description. Header-only, LibTorch only:
// the sample worker and `zcwrap bench`'s workers both use it.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <torch/script.h>

namespace sample {

// The elements of a tuple, or the value itself: a method's positional
// arguments, or what a pipeline's next model is fed.
inline std::vector<c10::IValue> as_arguments(const c10::IValue& value) {
  if (!value.isTuple()) return {value};
  const auto& elements = value.toTupleRef().elements();
  return std::vector<c10::IValue>(elements.begin(), elements.end());
}

// FNV-1a over shape and bytes (and the kind of anything not a tensor):
// equal digests mean bit-equal outputs, up to a 64-bit collision, so a
// driver compares workers without the tensors crossing the pipe.
class OutputDigest {
 public:
  void add(const void* data, size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) hash_ = (hash_ ^ p[i]) * 0x100000001b3ULL;
  }

  void add(const c10::IValue& value) {
    if (value.isTensor()) {
      const at::Tensor t = value.toTensor().contiguous();
      for (const int64_t size : t.sizes()) add(&size, sizeof(size));
      add(t.data_ptr(), t.nbytes());
    } else if (value.isTuple() || value.isList()) {
      for (const c10::IValue& e : value.isTuple() ? as_arguments(value) : value.toList().vec()) add(e);
    } else {
      const std::string text = value.tagKind();
      add(text.data(), text.size());
    }
  }

  std::string hex() const {
    char buf[17];
    std::snprintf(buf, sizeof(buf), "%016" PRIx64, hash_);
    return buf;
  }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

// "Float[2, 4]"; for a tuple or list, its kind.
inline std::string describe_output(const c10::IValue& value) {
  if (!value.isTensor()) return value.tagKind();
  const at::Tensor& t = value.toTensor();
  std::string text = std::string(c10::toString(t.scalar_type())) + "[";
  for (int64_t d = 0; d < t.dim(); ++d) text += (d ? ", " : "") + std::to_string(t.size(d));
  return text + "]";
}

}  // namespace sample
