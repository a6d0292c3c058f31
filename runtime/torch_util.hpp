// The tensors the format holds: dtype names (through format's one table) and
// which tensors go to the data section. Internal; includes LibTorch (as
// pack.hpp, rebind.hpp, unwrap.hpp, tensor_walk.hpp and mapped_load.hpp do).
#pragma once

#include <functional>
#include <string>

#include <torch/script.h>

#include "format.hpp"

namespace zcwrap::detail {

// "float32" for at::kFloat, ...; empty when the dtype has no name in the
// format (and so cannot be shared).
std::string dtype_name(at::ScalarType type);
at::ScalarType dtype_from_name(const std::string& name);

// Tensors whose bytes go to the data section. Everything else (quantized,
// sparse, nested, MKL-DNN, conjugate/negative views, undefined) stays in the
// skeleton. Pack and unwrap apply the same test, so they agree on which
// tensors the manifest lists.
bool is_shareable(const at::Tensor& t);


}  // namespace zcwrap::detail
