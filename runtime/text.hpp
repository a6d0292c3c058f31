// Small text helpers shared by the runtime and the CLI. Internal; torch-free.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace zcwrap::detail {

// "a, b, c": model names, method names, files, in messages.
std::string join(const std::vector<std::string>& items, std::string_view separator = ", ");

}  // namespace zcwrap::detail
