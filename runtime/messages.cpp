#include "messages.hpp"

#include <c10/util/Exception.h>

namespace zcwrap::detail {

std::string message_line(const std::exception& e, MessageLine which) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (which == MessageLine::kFirst) {
    const size_t end = text.find('\n');
    if (end != std::string::npos) text.resize(end);
  } else if (const size_t nl = text.rfind('\n'); nl != std::string::npos) {
    text.erase(0, nl + 1);
  }
  return without_torch_notes(text);
}

std::string first_line(const std::exception& e) { return message_line(e, MessageLine::kFirst); }

std::string without_torch_notes(std::string text) {
  // LibTorch appends "(Could this error message be improved? If so, please
  // report an enhancement request to PyTorch.)" to some messages: advice
  // meant for LibTorch's own developers, not for zcwrap's users.
  if (const size_t at = text.find("(Could this error message be improved?"); at != std::string::npos) {
    const size_t close = text.find(')', at);
    text.erase(at, close == std::string::npos ? std::string::npos : close + 1 - at);
  }
  // LibTorch 2.x ends a zip reader's error with ". This is an internal miniz
  // error. If you are seeing this error, there is a high likelihood that
  // your checkpoint file is corrupted. ...": guesses about checkpoints,
  // after the one fact that matters (what the reader failed to find).
  if (const size_t at = text.find(". This is an internal miniz error."); at != std::string::npos) text.resize(at);
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

}  // namespace zcwrap::detail
