// zcwrap::Error, the one exception type the library throws.
#pragma once

#include <stdexcept>
#include <string>

namespace zcwrap {

/// What went wrong, coarse enough for a program to act on. The `zcwrap` CLI
/// turns each code into its exit status (listed in zcwrap(1)).
enum class ErrorCode {
  kInternal = 1,     ///< a bug in zcwrap; please report it
  kUsage = 2,        ///< bad option or argument (unknown model name, bad --align, ...)
  kInput = 3,        ///< an input file is missing or cannot be read
  kBadBlob = 4,      ///< a blob or actor config is malformed, truncated or of another version
  kBadModel = 5,     ///< not a TorchScript archive, or the model failed to load or run
  kWrite = 6,        ///< an output could not be written (permissions, no space left)
  kDevice = 7,       ///< the requested device does not exist or is unavailable
  kStale = 8,        ///< an actor config no longer matches the blob it names
};

/// The exception every public zcwrap function throws. LibTorch and JSON
/// exceptions are converted into it at the library boundary, so callers
/// catch one type. `what()` is one line: "<file>: <what is wrong>".
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}

  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

/// The CLI's exit status for an error code.
inline int exit_status(ErrorCode code) noexcept { return static_cast<int>(code); }

}  // namespace zcwrap
