// Tensor constants of frozen TorchScript modules, moved to attributes and
// back. Internal.
//
// torch.jit.freeze turns weights into tensor-valued prim::Constant nodes of
// the method graphs; saved, they land in the archive's constants table, out
// of reach of a walk over attributes. Before packing, each shareable one is
// replaced by a read of a new buffer ("_zcwrap_const_N" on the module whose
// method used it), so the bytes go to the data section like any weight.
// Tested on LibTorch 1.13: the rewritten modules give bit-identical outputs.
#pragma once

#include <torch/script.h>

namespace zcwrap::detail {

inline constexpr const char* kHoistedPrefix = "_zcwrap_const_";

// Rewrites every shareable tensor constant in every method of `module` and
// its submodules into prim::GetAttr of a new buffer. Returns how many.
size_t hoist_tensor_constants(const torch::jit::Module& module);

// The reverse, for unpack: each hoisted buffer becomes a constant again and
// the buffer is removed, so the module is as it was packed.
void sink_tensor_constants(const torch::jit::Module& module);

}  // namespace zcwrap::detail
