// Inputs and LibTorch messages for the subcommands that run models.
#pragma once

#include <exception>
#include <string>
#include <vector>

#include <torch/script.h>

namespace zcwrap::cli {

// LibTorch's messages carry a C++ backtrace and, from the interpreter, a
// TorchScript traceback; the user needs the last line, which says what failed.
std::string torch_message(const std::exception& e);

// The positional arguments in a file written by Python's torch.save (a
// tensor, or a tuple of tensors), moved to `device`. Throws Error(kInput)
// naming the file.
std::vector<c10::IValue> read_inputs(const std::string& path, const c10::Device& device);

// A tuple's elements, or the value alone: the arguments of the next call in
// a pipeline.
std::vector<c10::IValue> as_arguments(const c10::IValue& value);

}  // namespace zcwrap::cli
