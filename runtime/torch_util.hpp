// LibTorch glue shared by pack and unwrap: dtype names, the tensor walk that
// both sides run in the same order, and conversion of LibTorch errors.
// Internal; includes LibTorch (as pack.hpp, rebind.hpp and mapped_load.hpp do).
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

// Called for each shareable tensor reachable from a module, in a fixed
// order; the returned tensor replaces it in place.
using TensorRewrite =
    std::function<at::Tensor(const std::string& path, format::TensorKind kind, const at::Tensor& t)>;

// Walks parameters, buffers, tensor attributes, and tensors inside
// list/tuple/dict attributes and script objects, in every submodule, in slot
// order, replacing each shareable tensor with `fn`'s result. A submodule or
// object reachable twice is walked once.
void rewrite_tensors(const torch::jit::Module& module, const TensorRewrite& fn);

// One line of a LibTorch exception's message, without its C++ backtrace and
// without LibTorch's notes to its own developers (without_torch_notes): the
// first (what a load refused), or the last (what failed, after the
// TorchScript traceback of an error raised while running a model).
enum class MessageLine { kFirst, kLast };
std::string message_line(const std::exception& e, MessageLine which);
std::string first_line(const std::exception& e);

// `text` without LibTorch's "(Could this error message be improved? ...)"
// and without its advice after a zip reader's error (". This is an internal
// miniz error. If you are seeing this error, ...").
std::string without_torch_notes(std::string text);

}  // namespace zcwrap::detail
