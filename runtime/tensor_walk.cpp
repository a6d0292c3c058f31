#include "tensor_walk.hpp"

#include <unordered_set>

#include "constants.hpp"
#include "torch_util.hpp"

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

void rewrite_tensors(const torch::jit::Module& module, const TensorRewrite& fn) {
  Walker(fn).walk_object(module._ivalue(), "");
}

}  // namespace zcwrap::detail
