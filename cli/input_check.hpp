// The checks on a `zcwrap run` / `bench` input file (IN.pt). This header is
// torch-free; check_input_pickle is too, so the fuzz target builds it.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace zcwrap::cli {

// Containers may nest this deep: a tuple of tensors needs 4 levels (the tuple,
// a tensor's argument tuple, its size tuple, the storage reference). Deeper
// values would be freed recursively by LibTorch, which overflows the stack.
inline constexpr size_t kMaxPickleDepth = 32;
// Memo slots: LibTorch grows its memo table to the largest index it is given.
inline constexpr size_t kMaxPickleMemo = size_t{1} << 20;

// Checks `pickle` (the data.pkl record of a torch.save zip file) against what
// torch.save writes for a tensor or a tuple of tensors: protocol 2, only the
// opcodes LibTorch's unpickler reads, only the globals
// torch._utils._rebuild_tensor_v2, torch.<Type>Storage and
// collections.OrderedDict, every storage reference shaped ('storage',
// torch.<Type>Storage, key, location, numel), no negative integer (sizes,
// strides, offsets and element counts are all the integers such a file
// holds), nesting at most kMaxPickleDepth, memo indices under
// kMaxPickleMemo. Returns what is wrong, or "" when nothing is. Never reads
// outside `pickle`.
std::string check_input_pickle(std::string_view pickle);

// Reads `path` as read_inputs (torch_io.hpp) does, every check included, and
// drops what it read: bench checks its input once before starting workers.
// Throws Error(kInput) naming the file.
void check_input_file(const std::string& path);

}  // namespace zcwrap::cli
