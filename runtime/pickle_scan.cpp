#include "pickle_scan.hpp"

#include <cstdint>
#include <set>
#include <unordered_map>

#include "zcwrap/error.hpp"

namespace zcwrap::detail {
namespace {

// How an opcode's argument is spelled after it (pickletools' ArgumentDescriptors).
enum class Arg : uint8_t {
  kNone,
  kUint1,
  kUint2,
  kInt4,
  kUint4,
  kUint8,
  kLine,      // up to a newline: decimals, floats, reprs
  kTwoLines,  // GLOBAL and INST: module, newline, name, newline
  kBytes1,    // a uint1 length, then that many bytes
  kBytes4,    // an int4 length, refused when negative (BINSTRING, LONG4)
  kUBytes4,   // a uint4 length (BINBYTES, BINUNICODE)
  kBytes8,    // a uint8 length
};

// What an opcode does to the stack. kPlain pops `pops` values and pushes
// `pushes` opaque ones; the others are handled one by one.
enum class Effect : uint8_t {
  kPlain,
  kString,      // pushes a str spelled out by its argument
  kGlobal,      // GLOBAL: pushes what it imports
  kInst,        // INST: imports, pops to the mark, pushes the object
  kStackGlobal, // pops module and name, pushes what they import
  kMark,
  kPopMark,     // pops to the mark, pushes nothing
  kFromMark,    // pops to the mark, pushes one value (TUPLE, LIST, DICT, FROZENSET, OBJ)
  kIntoMark,    // pops to the mark into the container below it (APPENDS, SETITEMS, ADDITEMS)
  kPop,         // POP: the top value, or the mark when nothing is above it
  kDup,
  kPut,         // PUT, BINPUT, LONG_BINPUT: memo[arg] = top
  kMemoize,     // memo[memo size] = top
  kGet,         // pushes memo[arg]
  kExtension,   // EXT1/2/4: imports through copyreg's registry, which the bytes do not name
  kProto,
  kFrame,
  kStop,
};

struct Op {
  uint8_t code = 0;
  const char* name = nullptr;  // nullptr: not an opcode
  Arg arg = Arg::kNone;
  Effect effect = Effect::kPlain;
  uint8_t pops = 0;
  uint8_t pushes = 0;
};

// Every opcode of protocols 0 to 5 (Lib/pickletools.py).
constexpr Op kOps[] = {
    {'I', "INT", Arg::kLine, Effect::kPlain, 0, 1},
    {'J', "BININT", Arg::kInt4, Effect::kPlain, 0, 1},
    {'K', "BININT1", Arg::kUint1, Effect::kPlain, 0, 1},
    {'M', "BININT2", Arg::kUint2, Effect::kPlain, 0, 1},
    {'L', "LONG", Arg::kLine, Effect::kPlain, 0, 1},
    {0x8a, "LONG1", Arg::kBytes1, Effect::kPlain, 0, 1},
    {0x8b, "LONG4", Arg::kBytes4, Effect::kPlain, 0, 1},
    {'S', "STRING", Arg::kLine, Effect::kString, 0, 1},
    {'T', "BINSTRING", Arg::kBytes4, Effect::kString, 0, 1},
    {'U', "SHORT_BINSTRING", Arg::kBytes1, Effect::kString, 0, 1},
    {'B', "BINBYTES", Arg::kUBytes4, Effect::kPlain, 0, 1},
    {'C', "SHORT_BINBYTES", Arg::kBytes1, Effect::kPlain, 0, 1},
    {0x8e, "BINBYTES8", Arg::kBytes8, Effect::kPlain, 0, 1},
    {0x96, "BYTEARRAY8", Arg::kBytes8, Effect::kPlain, 0, 1},
    {0x97, "NEXT_BUFFER", Arg::kNone, Effect::kPlain, 0, 1},
    {0x98, "READONLY_BUFFER", Arg::kNone, Effect::kPlain, 1, 1},
    {'N', "NONE", Arg::kNone, Effect::kPlain, 0, 1},
    {0x88, "NEWTRUE", Arg::kNone, Effect::kPlain, 0, 1},
    {0x89, "NEWFALSE", Arg::kNone, Effect::kPlain, 0, 1},
    {'V', "UNICODE", Arg::kLine, Effect::kString, 0, 1},
    {0x8c, "SHORT_BINUNICODE", Arg::kBytes1, Effect::kString, 0, 1},
    {'X', "BINUNICODE", Arg::kUBytes4, Effect::kString, 0, 1},
    {0x8d, "BINUNICODE8", Arg::kBytes8, Effect::kString, 0, 1},
    {'F', "FLOAT", Arg::kLine, Effect::kPlain, 0, 1},
    {'G', "BINFLOAT", Arg::kUint8, Effect::kPlain, 0, 1},
    {']', "EMPTY_LIST", Arg::kNone, Effect::kPlain, 0, 1},
    {'a', "APPEND", Arg::kNone, Effect::kPlain, 2, 1},
    {'e', "APPENDS", Arg::kNone, Effect::kIntoMark, 0, 0},
    {'l', "LIST", Arg::kNone, Effect::kFromMark, 0, 1},
    {')', "EMPTY_TUPLE", Arg::kNone, Effect::kPlain, 0, 1},
    {'t', "TUPLE", Arg::kNone, Effect::kFromMark, 0, 1},
    {0x85, "TUPLE1", Arg::kNone, Effect::kPlain, 1, 1},
    {0x86, "TUPLE2", Arg::kNone, Effect::kPlain, 2, 1},
    {0x87, "TUPLE3", Arg::kNone, Effect::kPlain, 3, 1},
    {'}', "EMPTY_DICT", Arg::kNone, Effect::kPlain, 0, 1},
    {'d', "DICT", Arg::kNone, Effect::kFromMark, 0, 1},
    {'s', "SETITEM", Arg::kNone, Effect::kPlain, 3, 1},
    {'u', "SETITEMS", Arg::kNone, Effect::kIntoMark, 0, 0},
    {0x8f, "EMPTY_SET", Arg::kNone, Effect::kPlain, 0, 1},
    {0x90, "ADDITEMS", Arg::kNone, Effect::kIntoMark, 0, 0},
    {0x91, "FROZENSET", Arg::kNone, Effect::kFromMark, 0, 1},
    {'0', "POP", Arg::kNone, Effect::kPop, 0, 0},
    {'2', "DUP", Arg::kNone, Effect::kDup, 0, 0},
    {'(', "MARK", Arg::kNone, Effect::kMark, 0, 0},
    {'1', "POP_MARK", Arg::kNone, Effect::kPopMark, 0, 0},
    {'g', "GET", Arg::kLine, Effect::kGet, 0, 0},
    {'h', "BINGET", Arg::kUint1, Effect::kGet, 0, 0},
    {'j', "LONG_BINGET", Arg::kUint4, Effect::kGet, 0, 0},
    {'p', "PUT", Arg::kLine, Effect::kPut, 0, 0},
    {'q', "BINPUT", Arg::kUint1, Effect::kPut, 0, 0},
    {'r', "LONG_BINPUT", Arg::kUint4, Effect::kPut, 0, 0},
    {0x94, "MEMOIZE", Arg::kNone, Effect::kMemoize, 0, 0},
    {0x82, "EXT1", Arg::kUint1, Effect::kExtension, 0, 1},
    {0x83, "EXT2", Arg::kUint2, Effect::kExtension, 0, 1},
    {0x84, "EXT4", Arg::kInt4, Effect::kExtension, 0, 1},
    {'c', "GLOBAL", Arg::kTwoLines, Effect::kGlobal, 0, 1},
    {0x93, "STACK_GLOBAL", Arg::kNone, Effect::kStackGlobal, 2, 1},
    {'R', "REDUCE", Arg::kNone, Effect::kPlain, 2, 1},
    {'b', "BUILD", Arg::kNone, Effect::kPlain, 2, 1},
    {'i', "INST", Arg::kTwoLines, Effect::kInst, 0, 1},
    {'o', "OBJ", Arg::kNone, Effect::kFromMark, 0, 1},
    {0x81, "NEWOBJ", Arg::kNone, Effect::kPlain, 2, 1},
    {0x92, "NEWOBJ_EX", Arg::kNone, Effect::kPlain, 3, 1},
    {0x80, "PROTO", Arg::kUint1, Effect::kProto, 0, 0},
    {'.', "STOP", Arg::kNone, Effect::kStop, 0, 0},
    {0x95, "FRAME", Arg::kUint8, Effect::kFrame, 0, 0},
    {'P', "PERSID", Arg::kLine, Effect::kPlain, 0, 1},
    {'Q', "BINPERSID", Arg::kNone, Effect::kPlain, 1, 1},
};

struct OpTable {
  Op by_code[256]{};
  constexpr OpTable() {
    for (const Op& op : kOps) by_code[op.code] = op;
  }
};
constexpr OpTable kOpTable;

constexpr int kMaxProtocol = 5;

// Longest module or name a global may have; Python's own are far shorter.
constexpr size_t kMaxGlobalLength = 4096;

// A value on the modelled stack: a str the pickle spells out (where its
// bytes are in the pickle), or anything else.
struct Value {
  enum class Kind : uint8_t { kOther, kText };
  Kind kind = Kind::kOther;
  uint32_t length = 0;
  uint64_t offset = 0;
};

class Scanner {
 public:
  explicit Scanner(std::string_view pickle) : p_(pickle), reader_(pickle) {}

  PickleScan run() {
    PickleScan out;
    PickleOp op;
    while (error_.empty()) {
      at_ = reader_.position();
      if (!reader_.next(&op)) {
        fail(at_, reader_.error().empty() ? "ends before its STOP opcode (truncated?)" : reader_.error());
        break;
      }
      if (op.code == '.') break;
      step(op);
    }
    out.globals.assign(globals_.begin(), globals_.end());
    out.error = error_;
    return out;
  }

 private:
  void fail(size_t at, const std::string& what) {
    if (error_.empty()) error_ = "byte " + std::to_string(at) + ": " + what;
  }

  const char* current() const { return name_; }

  // The part of the stack above the last mark; pops never reach below it.
  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }

  bool need(size_t n) {
    if (stack_.size() - fence() < n) {
      fail(at_, std::string(current()) + " needs " + std::to_string(n) + " values on the stack, " +
                    std::to_string(stack_.size() - fence()) + " are there (stack underflow)");
      return false;
    }
    return true;
  }

  void push(const Value& v) {
    if (stack_.size() >= kMaxPickleValues) {
      return fail(at_, "more than " + std::to_string(kMaxPickleValues) + " values on the stack");
    }
    stack_.push_back(v);
  }

  bool pop_mark() {
    if (marks_.empty()) {
      fail(at_, std::string(current()) + " has no MARK to close");
      return false;
    }
    stack_.resize(marks_.back());
    marks_.pop_back();
    return true;
  }

  // A decimal memo index (GET, PUT): digits only, as Python's int() of
  // them would give; anything else is refused rather than guessed.
  bool decimal(std::string_view text, uint64_t* out) {
    if (text.empty() || text.size() > 18 || text.find_first_not_of("0123456789") != std::string_view::npos) {
      fail(at_, std::string(current()) + " argument '" + std::string(text.substr(0, 32)) +
                    "' is not a memo index zcwrap reads");
      return false;
    }
    *out = std::stoull(std::string(text));
    return true;
  }

  std::string_view text(const Value& v) const { return p_.substr(v.offset, v.length); }

  // A str whose bytes are [start, start + n) of the pickle, taken as they
  // stand. `plain_ascii`: the opcode decodes its bytes otherwise than as
  // UTF-8 (ASCII, latin-1, escapes), so only printable ASCII without a
  // backslash reads the same; anything else stays opaque, and a
  // STACK_GLOBAL over it is refused rather than guessed.
  Value str_at(size_t start, size_t n, bool plain_ascii) const {
    if (n > UINT32_MAX) return {};
    if (plain_ascii) {
      for (const char c : p_.substr(start, n)) {
        if (c < 0x20 || c > 0x7e || c == '\\') return {};
      }
    }
    Value v;
    v.kind = Value::Kind::kText;
    v.offset = start;
    v.length = static_cast<uint32_t>(n);
    return v;
  }

  // STRING's argument is a quoted repr.
  Value quoted_string(std::string_view arg, size_t start) {
    if (arg.size() < 2 || arg.front() != arg.back() || (arg.front() != '\'' && arg.front() != '"')) {
      fail(at_, "the STRING argument is not quoted");
      return {};
    }
    return str_at(start + 1, arg.size() - 2, /*plain_ascii=*/true);
  }

  void global(std::string_view module, std::string_view name) {
    if (module.size() > kMaxGlobalLength || name.size() > kMaxGlobalLength) {
      return fail(at_, "imports a global whose module or name is longer than " + std::to_string(kMaxGlobalLength) +
                           " bytes");
    }
    if (globals_.size() >= kMaxPickleValues) return fail(at_, "imports too many globals");
    globals_.insert({std::string(module), std::string(name)});
  }

  void step(const PickleOp& read) {
    const Op& op = kOpTable.by_code[read.code];
    name_ = read.name;
    uint64_t number = read.number;
    const std::string_view arg = read.arg;
    Value top;
    switch (op.effect) {
      case Effect::kPlain:
        if (!need(op.pops)) return;
        stack_.resize(stack_.size() - op.pops);
        for (uint8_t i = 0; i < op.pushes; ++i) push({});
        return;
      case Effect::kString: {
        const auto arg_start = static_cast<size_t>(arg.data() - p_.data());  // the argument views the pickle
        if (op.code == 'S') return push(quoted_string(arg, arg_start));
        // UNICODE is raw-unicode-escape, BINSTRING and SHORT_BINSTRING are
        // decoded as ASCII; the BINUNICODEs are UTF-8.
        return push(str_at(arg_start, arg.size(), op.code == 'V' || op.code == 'T' || op.code == 'U'));
      }
      case Effect::kGlobal:
        global(arg, read.second);
        if (error_.empty()) push({});
        return;
      case Effect::kInst:
        global(arg, read.second);
        if (error_.empty() && pop_mark()) push({});
        return;
      case Effect::kStackGlobal: {
        if (!need(2)) return;
        const Value name = stack_.back();
        const Value module = stack_[stack_.size() - 2];
        stack_.resize(stack_.size() - 2);
        if (module.kind == Value::Kind::kOther || name.kind == Value::Kind::kOther) {
          return fail(at_, "STACK_GLOBAL imports a name that is not a string spelled out in the pickle "
                           "(computed when it is loaded, or escaped); what it imports cannot be told");
        }
        global(text(module), text(name));
        if (error_.empty()) push({});
        return;
      }
      case Effect::kMark:
        if (marks_.size() >= kMaxPickleValues) return fail(at_, "too many MARKs");
        marks_.push_back(stack_.size());
        return;
      case Effect::kPopMark:
        pop_mark();
        return;
      case Effect::kFromMark:
        // OBJ takes the class from above its mark: at least one value.
        if (op.code == 'o' && !need(1)) return;
        if (pop_mark()) push({});
        return;
      case Effect::kIntoMark:
        if (!pop_mark()) return;
        if (!need(1)) return;
        stack_.back() = {};  // the container, changed
        return;
      case Effect::kPop:
        if (stack_.size() > fence()) {
          stack_.pop_back();
        } else {
          pop_mark();
        }
        return;
      case Effect::kDup:
        if (!need(1)) return;
        top = stack_.back();
        return push(top);
      case Effect::kPut: {
        if (op.code == 'p' && !decimal(arg, &number)) return;
        if (!need(1)) return;
        if (memo_.size() >= kMaxPickleValues && memo_.find(number) == memo_.end()) {
          return fail(at_, "more than " + std::to_string(kMaxPickleValues) + " memo entries");
        }
        memo_[number] = stack_.back();
        return;
      }
      case Effect::kMemoize: {
        if (!need(1)) return;
        if (memo_.size() >= kMaxPickleValues) {
          return fail(at_, "more than " + std::to_string(kMaxPickleValues) + " memo entries");
        }
        memo_[memo_.size()] = stack_.back();
        return;
      }
      case Effect::kGet: {
        if (op.code == 'g' && !decimal(arg, &number)) return;
        const auto it = memo_.find(number);
        if (it == memo_.end()) return fail(at_, "memo entry " + std::to_string(number) + " was never set");
        top = it->second;
        return push(top);
      }
      case Effect::kExtension:
        return fail(at_, std::string(current()) + " imports extension code " + std::to_string(number) +
                             " of copyreg's registry, which the pickle does not name");
      case Effect::kProto:
        if (number > kMaxProtocol) {
          return fail(at_, "protocol " + std::to_string(number) + " (this zcwrap reads protocols 0 to 5)");
        }
        return;
      case Effect::kFrame:
      case Effect::kStop:
        return;
    }
  }

  std::string_view p_;
  PickleReader reader_;
  size_t at_ = 0;                 // where the current opcode starts
  const char* name_ = "";         // and its name
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  std::set<PickleGlobal> globals_;
  std::string error_;
};

}  // namespace

bool PickleReader::take(uint64_t n, const char* name, std::string_view* out) {
  if (p_.size() - pos_ < n) {
    error_ = std::string(name) + " needs " + std::to_string(n) + " bytes, " + std::to_string(p_.size() - pos_) +
             " are left (truncated)";
    return false;
  }
  *out = p_.substr(pos_, n);
  pos_ += n;
  return true;
}

bool PickleReader::little_endian(size_t n, const char* name, uint64_t* out) {
  std::string_view bytes;
  if (!take(n, name, &bytes)) return false;
  uint64_t v = 0;
  for (size_t i = n; i-- > 0;) v = (v << 8) | static_cast<uint8_t>(bytes[i]);
  *out = v;
  return true;
}

bool PickleReader::line(const char* name, std::string_view* out) {
  const size_t end = p_.find('\n', pos_);
  if (end == std::string_view::npos) {
    error_ = std::string(name) + ": no newline ends its argument (truncated)";
    return false;
  }
  *out = p_.substr(pos_, end - pos_);
  pos_ = end + 1;
  return true;
}

bool PickleReader::next(PickleOp* op) {
  if (!error_.empty() || pos_ >= p_.size()) return false;
  *op = PickleOp();
  op->at = pos_;
  op->code = static_cast<uint8_t>(p_[pos_]);
  const Op& entry = kOpTable.by_code[op->code];
  if (entry.name == nullptr) {
    static const char kHex[] = "0123456789abcdef";
    error_ = std::string("opcode 0x") + kHex[op->code >> 4] + kHex[op->code & 15] + " is not a pickle opcode";
    return false;
  }
  ++pos_;
  op->name = entry.name;
  uint64_t length = 0;
  switch (entry.arg) {
    case Arg::kNone: return true;
    case Arg::kUint1: return little_endian(1, op->name, &op->number);
    case Arg::kUint2: return little_endian(2, op->name, &op->number);
    case Arg::kInt4:
    case Arg::kUint4: return little_endian(4, op->name, &op->number);
    case Arg::kUint8: return little_endian(8, op->name, &op->number);
    case Arg::kLine: return line(op->name, &op->arg);
    case Arg::kTwoLines: return line(op->name, &op->arg) && line(op->name, &op->second);
    case Arg::kBytes1: return little_endian(1, op->name, &length) && take(length, op->name, &op->arg);
    case Arg::kBytes4:
      if (!little_endian(4, op->name, &length)) return false;
      if (length > INT32_MAX) {
        error_ = std::string(op->name) + " has a negative length";
        return false;
      }
      return take(length, op->name, &op->arg);
    case Arg::kUBytes4: return little_endian(4, op->name, &length) && take(length, op->name, &op->arg);
    case Arg::kBytes8: return little_endian(8, op->name, &length) && take(length, op->name, &op->arg);
  }
  return true;
}

PickleScan scan_pickle(std::string_view pickle) { return Scanner(pickle).run(); }

std::vector<PickleGlobal> pickle_globals(std::string_view pickle, const std::string& what) {
  PickleScan scan = scan_pickle(pickle);
  if (!scan.error.empty()) {
    throw Error(ErrorCode::kBadBlob, what + ": cannot tell what its pickle imports: " + scan.error);
  }
  return std::move(scan.globals);
}

bool beyond_torch(const PickleGlobal& g) {
  const auto starts = [](const std::string& s, std::string_view head) { return s.rfind(head, 0) == 0; };
  const auto ends = [](const std::string& s, std::string_view tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  static const std::set<PickleGlobal> kPlain = {
      {"collections", "OrderedDict"}, {"collections", "Counter"}, {"builtins", "set"},
      {"builtins", "bytearray"},      {"builtins", "complex"},    {"_codecs", "encode"},
      {"torch", "Size"},              {"torch", "device"},        {"torch", "Tensor"},
      {"torch", "bool"},              {"torch", "half"},          {"torch", "double"},
      {"torch", "long"},              {"torch", "short"},         {"torch", "cfloat"},
      {"torch", "cdouble"},           {"torch", "chalf"},         {"torch.nn.parameter", "Parameter"},
      {"torch.serialization", "_get_layout"}, {"torch._tensor", "_rebuild_from_type_v2"}};
  if (kPlain.count(g) != 0) return false;
  if (g.name.find('.') != std::string::npos) return true;
  if (g.module == "torch") {
    for (const char* head : {"float", "int", "uint", "bfloat", "complex", "qint", "quint", "bits", "per_"}) {
      if (starts(g.name, head)) return false;
    }
    return !(ends(g.name, "Tensor") || ends(g.name, "Storage"));
  }
  if (g.module == "torch._utils") return !starts(g.name, "_rebuild_");
  if (g.module == "torch.storage" || g.module == "torch.cuda") return !ends(g.name, "Storage");
  return !(starts(g.module, "torch.nn.modules.") || g.module == "torch.nn.functional" || g.module == "torch._C._nn");
}

}  // namespace zcwrap::detail
