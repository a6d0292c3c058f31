#include "constants.hpp"

#include <map>

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include "torch_util.hpp"

namespace zcwrap::detail {
namespace {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;

// Module objects grouped by class: a method's graph belongs to the class, so
// a buffer it reads must exist on every instance.
std::vector<std::pair<c10::ClassTypePtr, std::vector<torch::jit::Module>>> modules_by_type(
    const torch::jit::Module& root) {
  std::vector<std::pair<c10::ClassTypePtr, std::vector<torch::jit::Module>>> out;
  std::map<const c10::ClassType*, size_t> index;
  for (const torch::jit::Module& m : root.modules()) {
    auto [it, added] = index.emplace(m.type().get(), out.size());
    if (added) out.push_back({m.type(), {}});
    out[it->second].second.push_back(m);
  }
  return out;
}

template <typename Fn>
void for_each_node(Block* block, const Fn& fn) {
  // Collected first: fn may destroy the node it is given.
  std::vector<Node*> nodes(block->nodes().begin(), block->nodes().end());
  for (Node* node : nodes) {
    for (Block* inner : node->blocks()) for_each_node(inner, fn);
    fn(node);
  }
}

std::vector<std::shared_ptr<Graph>> method_graphs(const c10::ClassTypePtr& type) {
  std::vector<std::shared_ptr<Graph>> graphs;
  for (torch::jit::Function* fn : type->methods()) {
    if (fn->isGraphFunction()) graphs.push_back(torch::jit::toGraphFunction(*fn).graph());
  }
  return graphs;
}

}  // namespace

size_t hoist_tensor_constants(const torch::jit::Module& root) {
  size_t count = 0;
  for (auto& [type, instances] : modules_by_type(root)) {
    for (const std::shared_ptr<Graph>& graph : method_graphs(type)) {
      torch::jit::Value* self = graph->inputs().at(0);
      for_each_node(graph->block(), [&](Node* node) {
        if (node->kind() != c10::prim::Constant || !node->output()->type()->isSubtypeOf(*c10::TensorType::get())) {
          return;
        }
        const c10::IValue value = *torch::jit::toIValue(node->output());
        if (!value.isTensor() || !is_shareable(value.toTensor())) return;
        std::string name;
        do {  // a user attribute could, in theory, have taken the name
          name = kHoistedPrefix + std::to_string(count++);
        } while (type->hasAttribute(name));
        instances.front().register_buffer(name, value.toTensor());
        for (size_t i = 1; i < instances.size(); ++i) instances[i]._ivalue()->setAttr(name, value);
        torch::jit::WithInsertPoint guard(node);
        torch::jit::Value* read = graph->insertGetAttr(self, name);
        node->output()->replaceAllUsesWith(read);
        node->destroy();
      });
    }
  }
  return count;
}

void sink_tensor_constants(const torch::jit::Module& root) {
  for (auto& [type, instances] : modules_by_type(root)) {
    std::vector<std::string> hoisted;
    for (size_t i = 0; i < type->numAttributes(); ++i) {
      if (type->getAttributeName(i).rfind(kHoistedPrefix, 0) == 0) hoisted.push_back(type->getAttributeName(i));
    }
    if (hoisted.empty()) continue;
    for (const std::shared_ptr<Graph>& graph : method_graphs(type)) {
      torch::jit::Value* self = graph->inputs().at(0);
      for_each_node(graph->block(), [&](Node* node) {
        if (node->kind() != c10::prim::GetAttr || node->input() != self) return;
        const std::string name = node->s(c10::attr::name);
        if (name.rfind(kHoistedPrefix, 0) != 0) return;
        torch::jit::WithInsertPoint guard(node);
        torch::jit::Value* constant = graph->insertConstant(instances.front().attr(name));
        node->output()->replaceAllUsesWith(constant);
        node->destroy();
      });
    }
    for (const std::string& name : hoisted) {
      for (torch::jit::Module& m : instances) m._ivalue()->unsafeRemoveAttr(name);
      type->unsafeRemoveAttribute(name);
    }
  }
}

}  // namespace zcwrap::detail
