#include "input_check.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "pickle_scan.hpp"

namespace zcwrap::cli {
namespace {

// What the check needs to know of a value on the unpickler's stack.
enum class Kind : uint8_t { kInt, kStr, kStorageType, kCallable, kTuple, kOther };

struct Item {
  size_t depth = 0;  // containers nested in this value, itself included
  Kind kind = Kind::kOther;
  // A tuple's elements, when it has at most 5 (a storage reference has 5).
  std::array<Kind, 5> elements{};
  size_t size = 0;
};

// Opcodes and their arguments are read by the runtime's one pickle reader
// (runtime/pickle_scan.hpp), which knows every opcode's encoding; this
// checker decides which of them, and which values, a torch.save of tensors
// may hold.
class Checker {
 public:
  explicit Checker(std::string_view pickle) : reader_(pickle) {}

  std::string run() {
    detail::PickleOp op;
    if (!reader_.next(&op) || op.code != 0x80 || op.number != 2) return "not a protocol 2 pickle";
    while (error_.empty()) {
      const size_t at = reader_.position();
      if (!reader_.next(&op)) {
        if (reader_.error().empty()) return "ends before its STOP opcode";
        return "byte " + std::to_string(at) + ": " + reader_.error();
      }
      if (op.code == '.') break;
      step(op);
      if (!error_.empty()) return "byte " + std::to_string(at) + ": " + error_;
    }
    if (!error_.empty()) return error_;
    if (stack_.size() != 1) return "leaves " + std::to_string(stack_.size()) + " values, not one";
    return "";
  }

 private:
  void fail(std::string what) {
    if (error_.empty()) error_ = std::move(what);
  }

  // A little-endian integer spelled in `bytes` (LONG1's argument).
  static uint64_t little_endian(std::string_view bytes) {
    uint64_t v = 0;
    for (size_t i = bytes.size(); i-- > 0;) v = (v << 8) | uint8_t(bytes[i]);
    return v;
  }

  void push(Item item) {
    if (item.depth > kMaxPickleDepth) {
      fail("values nested more than " + std::to_string(kMaxPickleDepth) + " deep");
      return;
    }
    stack_.push_back(item);
  }
  void push(Kind kind, size_t depth = 0) {
    Item item;
    item.kind = kind;
    item.depth = depth;
    push(item);
  }

  bool need(size_t n) {
    if (stack_.size() < n) fail("needs " + std::to_string(n) + " values on the stack");
    return error_.empty();
  }

  // Pops the values above the last MARK; false (and an error) without one.
  bool pop_to_mark(std::vector<Item>* items) {
    if (marks_.empty() || marks_.back() > stack_.size()) {
      fail("no MARK to close");
      return false;
    }
    const size_t start = marks_.back();
    marks_.pop_back();
    items->assign(stack_.begin() + static_cast<std::ptrdiff_t>(start), stack_.end());
    stack_.resize(start);
    return true;
  }

  static size_t deepest(const std::vector<Item>& items) {
    size_t d = 0;
    for (const Item& i : items) d = std::max(d, i.depth);
    return d;
  }

  void push_tuple(const std::vector<Item>& items) {
    Item t;
    t.kind = Kind::kTuple;
    t.depth = deepest(items) + 1;
    t.size = items.size();
    for (size_t i = 0; i < items.size() && i < t.elements.size(); ++i) t.elements[i] = items[i].kind;
    push(t);
  }

  std::vector<Item> pop_n(size_t n) {
    std::vector<Item> items;
    if (!need(n)) return items;
    items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
    stack_.resize(stack_.size() - n);
    return items;
  }

  // The container below the popped values grows as deep as what went in.
  void fill(size_t container, const std::vector<Item>& items) {
    if (container >= stack_.size()) {
      fail("no container to add to");
      return;
    }
    Item& c = stack_[container];
    c.depth = std::max(c.depth, deepest(items) + 1);
    if (c.depth > kMaxPickleDepth) fail("values nested more than " + std::to_string(kMaxPickleDepth) + " deep");
  }

  // The integers of a tensor or a tuple of tensors are sizes, strides, an
  // offset and element counts: none is negative (LibTorch 1.13's unpickler
  // would quietly drop a negative stride; Python's torch.load refuses it).
  void signed_int(int64_t v) {
    if (v < 0) return fail("a negative integer (" + std::to_string(v) + "), which no tensor's size, stride, offset "
                           "or element count is");
    push(Kind::kInt);
  }

  void memo_put(uint64_t index) {
    if (index >= kMaxPickleMemo) return fail("memo index " + std::to_string(index) + " is too large");
    if (need(1)) memo_[index] = stack_.back();
  }

  void memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return fail("memo index " + std::to_string(index) + " was never set");
    push(it->second);
  }

  void global(std::string_view module, std::string_view name) {
    const auto ends_with = [](std::string_view s, std::string_view tail) {
      return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
    };
    if (module == "torch" && ends_with(name, "Storage")) return push(Kind::kStorageType);
    if ((module == "torch._utils" && name == "_rebuild_tensor_v2") ||
        (module == "collections" && name == "OrderedDict")) {
      return push(Kind::kCallable);
    }
    fail("holds a " + std::string(module) + "." + std::string(name) +
         "; expected tensors (torch.save of a tensor, or of a tuple of tensors)");
  }

  void step(const detail::PickleOp& read) {
    const uint8_t op = read.code;
    std::vector<Item> items;
    switch (op) {
      case '(': marks_.push_back(stack_.size()); break;
      case 'N': case 0x88: case 0x89: push(Kind::kOther); break;         // NONE NEWTRUE NEWFALSE
      case 'K': push(Kind::kInt); break;                                 // BININT1
      case 'M': push(Kind::kInt); break;                                 // BININT2
      case 'J': signed_int(static_cast<int32_t>(read.number)); break;    // BININT
      case 0x8a:                                                         // LONG1, 8 bytes only
        if (read.arg.size() != 8) return fail("LONG1 of other than 8 bytes");
        signed_int(static_cast<int64_t>(little_endian(read.arg)));
        break;
      case 'G': push(Kind::kOther); break;                               // BINFLOAT
      case 'X': push(Kind::kStr); break;                                 // BINUNICODE
      case 'c': global(read.arg, read.second); break;
      case ')': push_tuple({}); break;                                   // EMPTY_TUPLE
      case ']': case '}': push(Kind::kOther, 1); break;                  // EMPTY_LIST EMPTY_DICT
      case 't': if (pop_to_mark(&items)) push_tuple(items); break;       // TUPLE
      case 0x85: case 0x86: case 0x87:                                   // TUPLE1-3
        items = pop_n(op - 0x84);
        if (error_.empty()) push_tuple(items);
        break;
      case 'l': case 'd':                                                // LIST DICT
        if (pop_to_mark(&items)) push(Kind::kOther, deepest(items) + 1);
        break;
      case 'e': case 'u': {                                              // APPENDS SETITEMS
        const size_t container = marks_.empty() ? 0 : marks_.back();
        if (container == 0) return fail("no container to add to");
        if (pop_to_mark(&items)) fill(container - 1, items);
        break;
      }
      case 's':                                                          // SETITEM
        items = pop_n(2);
        if (error_.empty()) fill(stack_.size() - 1, items);
        break;
      case 'q': case 'r': memo_put(read.number); break;                  // BINPUT LONG_BINPUT
      case 'h': case 'j': memo_get(read.number); break;                  // BINGET LONG_BINGET
      case 0x81: pop_n(1); break;                                        // NEWOBJ: drops its argument tuple
      case 'R': case 'b':                                                // REDUCE BUILD
        items = pop_n(2);
        if (!error_.empty()) return;
        if (items[0].kind != Kind::kCallable) return fail("calls something that is not a function");
        push(Kind::kOther, 1);  // a tensor, or an empty OrderedDict
        break;
      case 'Q': {                                                        // BINPERSID
        items = pop_n(1);
        if (!error_.empty()) return;
        const Item& id = items[0];
        const std::array<Kind, 5> storage = {Kind::kStr, Kind::kStorageType, Kind::kStr, Kind::kStr, Kind::kInt};
        if (id.kind != Kind::kTuple || id.size != 5 || id.elements != storage) {
          return fail("a storage reference that is not ('storage', torch.<Type>Storage, key, location, numel)");
        }
        push(Kind::kOther, 1);
        break;
      }
      default: {
        static const char kHex[] = "0123456789abcdef";
        return fail(std::string("opcode 0x") + kHex[op >> 4] + kHex[op & 15] + ", which torch.save does not write");
      }
    }
  }

  detail::PickleReader reader_;
  std::vector<Item> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Item> memo_;
  std::string error_;
};

}  // namespace

std::string check_input_pickle(std::string_view pickle) { return Checker(pickle).run(); }

}  // namespace zcwrap::cli
