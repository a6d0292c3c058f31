// LibTorch's exception messages trimmed to the one line zcwrap's errors
// carry. Internal; the header is torch-free.
#pragma once

#include <exception>
#include <string>

namespace zcwrap::detail {

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
