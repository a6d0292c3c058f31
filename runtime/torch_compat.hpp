// Where LibTorch 1.13 and 2.x differ for zcwrap: the one place for version
// shims, so the rest of the runtime is written once. Internal.
#pragma once

#include <c10/util/Exception.h>
#include <torch/version.h>

namespace zcwrap::detail {

// Drops the LibTorch warnings raised on this thread while alive. For calls
// whose warnings are about zcwrap's own use of LibTorch, not the user's
// model: creating quantized placeholders warns of the quantized dtypes'
// deprecation on every call from 2.10 on.
class QuietWarnings {
 public:
  QuietWarnings() : guard_(&handler()) {}
  QuietWarnings(const QuietWarnings&) = delete;
  QuietWarnings& operator=(const QuietWarnings&) = delete;

 private:
  class Silent final : public c10::WarningHandler {
   public:
#if TORCH_VERSION_MAJOR >= 2
    void process(const c10::Warning&) override {}
#else
    void process(const c10::SourceLocation&, const std::string&, bool) override {}
#endif
  };
  static Silent& handler() {
    static Silent silent;
    return silent;
  }
#if TORCH_VERSION_MAJOR >= 2
  c10::WarningUtils::WarningHandlerGuard guard_;
#else
  c10::Warning::WarningHandlerGuard guard_;
#endif
};

}  // namespace zcwrap::detail
