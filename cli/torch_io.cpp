#include "torch_io.hpp"

#include "torch_util.hpp"
#include "zcwrap/error.hpp"
#include "zcwrap/internal/file_util.hpp"

namespace zcwrap::cli {

std::string torch_message(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  const size_t nl = text.rfind('\n');
  return detail::without_torch_notes(nl == std::string::npos ? text : text.substr(nl + 1));
}

std::vector<c10::IValue> as_arguments(const c10::IValue& value) {
  if (!value.isTuple()) return {value};
  const auto& elements = value.toTupleRef().elements();
  return std::vector<c10::IValue>(elements.begin(), elements.end());
}

std::vector<c10::IValue> read_inputs(const std::string& path, const c10::Device& device) {
  const std::string bytes = detail::read_file(path);
  c10::IValue value;
  try {
    value = torch::jit::pickle_load(std::vector<char>(bytes.begin(), bytes.end()));
  } catch (const std::exception& e) {
    throw Error(ErrorCode::kInput, path + ": not a tensor file written by torch.save (" + torch_message(e) + ")");
  }
  std::vector<c10::IValue> args = as_arguments(value);
  for (c10::IValue& v : args) {
    if (!v.isTensor()) {
      throw Error(ErrorCode::kInput, path + ": holds a " + v.tagKind() + "; expected a tensor or a tuple of tensors");
    }
    v = v.toTensor().to(device);
  }
  return args;
}

}  // namespace zcwrap::cli
