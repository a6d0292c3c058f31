#include "torch_util.hpp"

#include <unordered_set>

#include "constants.hpp"

namespace zcwrap::detail {
namespace {

using format::TensorKind;

class Walker {
 public:
  explicit Walker(const TensorRewrite& fn) : fn_(fn) {}

  void walk_object(const c10::intrusive_ptr<c10::ivalue::Object>& obj, const std::string& prefix) {
    if (!seen_.insert(obj.get()).second) return;
    const c10::ClassTypePtr type = obj->type();
    const bool is_module = type->is_module();
    for (size_t i = 0; i < type->numAttributes(); ++i) {
      const std::string path = prefix + type->getAttributeName(i);
      const c10::IValue value = obj->getSlot(i);
      if (value.isTensor()) {
        TensorKind kind = !is_module                                   ? TensorKind::kContainer
                          : type->is_parameter(i)                      ? TensorKind::kParameter
                          : path.find(kHoistedPrefix) != std::string::npos ? TensorKind::kConstant
                          : type->is_buffer(i)                         ? TensorKind::kBuffer
                                                                       : TensorKind::kAttribute;
        const at::Tensor& t = value.toTensor();
        if (is_shareable(t)) obj->setSlot(i, fn_(path, kind, t));
      } else if (value.isObject()) {
        walk_object(value.toObject(), path + ".");
      } else if (value.isList() || value.isTuple() || value.isGenericDict()) {
        bool changed = false;
        c10::IValue rebuilt = rewrite_value(value, path, &changed);
        if (changed) obj->setSlot(i, std::move(rebuilt));
      }
    }
  }

 private:
  // Containers are rebuilt rather than edited: a list may be shared with
  // other owners, and tuples are immutable.
  c10::IValue rewrite_value(const c10::IValue& value, const std::string& path, bool* changed) {
    if (value.isTensor()) {
      const at::Tensor& t = value.toTensor();
      if (!is_shareable(t)) return value;
      *changed = true;
      return fn_(path, TensorKind::kContainer, t);
    }
    if (value.isObject()) {
      walk_object(value.toObject(), path + ".");
      return value;
    }
    if (value.isList()) {
      c10::List<c10::IValue> list = value.toList();
      c10::impl::GenericList out(list.elementType());
      out.reserve(list.size());
      for (size_t i = 0; i < list.size(); ++i) {
        out.push_back(rewrite_value(list.get(i), path + "[" + std::to_string(i) + "]", changed));
      }
      return out;
    }
    if (value.isTuple()) {
      const auto& tuple = value.toTupleRef();
      std::vector<c10::IValue> elements;
      for (size_t i = 0; i < tuple.size(); ++i) {
        elements.push_back(
            rewrite_value(tuple.elements()[i], path + "[" + std::to_string(i) + "]", changed));
      }
      return c10::ivalue::Tuple::createNamed(std::move(elements), tuple.type());
    }
    if (value.isGenericDict()) {
      c10::impl::GenericDict dict = value.toGenericDict();
      c10::impl::GenericDict out(dict.keyType(), dict.valueType());
      size_t index = 0;
      for (const auto& entry : dict) {
        const c10::IValue& key = entry.key();
        std::string key_path = key.isString() ? "['" + key.toStringRef() + "']"
                               : key.isInt()  ? "[" + std::to_string(key.toInt()) + "]"
                                              : "[#" + std::to_string(index) + "]";
        out.insert(key, rewrite_value(entry.value(), path + key_path, changed));
        ++index;
      }
      return out;
    }
    return value;
  }

  const TensorRewrite& fn_;
  std::unordered_set<const c10::ivalue::Object*> seen_;
};

}  // namespace

std::string dtype_name(at::ScalarType type) {
  for (const format::Dtype& d : format::kDtypes) {
    if (d.torch_code == static_cast<int>(type)) return std::string(d.name);
  }
  return {};
}

at::ScalarType dtype_from_name(const std::string& name) {
  const format::Dtype* d = format::find_dtype(name);
  if (d == nullptr) throw std::invalid_argument("unknown dtype " + name);  // the manifest check rules this out
  return static_cast<at::ScalarType>(d->torch_code);
}

bool is_shareable(const at::Tensor& t) {
  // A nested tensor's layout reads kStrided, but it has no sizes or strides
  // to record ("NestedTensorImpl doesn't support sizes").
  if (!t.defined() || t.is_nested() || t.layout() != at::kStrided || !t.device().is_cpu() || t.is_mkldnn() ||
      t.is_conj() || t.is_neg() || !t.has_storage() || dtype_name(t.scalar_type()).empty()) {
    return false;
  }
  // Quantized: the affine schemes, whose parameters the manifest records.
  return !t.is_quantized() || t.qscheme() == at::kPerTensorAffine || t.qscheme() == at::kPerChannelAffine;
}

void rewrite_tensors(const torch::jit::Module& module, const TensorRewrite& fn) {
  Walker(fn).walk_object(module._ivalue(), "");
}

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
