// The walk over a TorchScript module's tensors that pack and unwrap both run,
// in the same order. Internal; includes LibTorch.
#pragma once

#include <functional>
#include <string>

#include <torch/script.h>

#include "format.hpp"

namespace zcwrap::detail {

// Called for each shareable tensor reachable from a module, in a fixed
// order; the returned tensor replaces it in place.
using TensorRewrite =
    std::function<at::Tensor(const std::string& path, format::TensorKind kind, const at::Tensor& t)>;

// Walks parameters, buffers, tensor attributes, and tensors inside
// list/tuple/dict attributes and script objects, in every submodule, in slot
// order, replacing each shareable tensor with `fn`'s result. A submodule or
// object reachable twice is walked once.
void rewrite_tensors(const torch::jit::Module& module, const TensorRewrite& fn);

}  // namespace zcwrap::detail
