// What a Python pickle imports, read from its opcodes without running it.
// Internal to the runtime; torch-free (the scanner is pure byte reading).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace zcwrap::detail {

// Values the scanner keeps track of at once, on the stack and in the memo;
// a pickle that needs more is refused as unreadable. Python's own pickler
// stays far below: a module pickle memoizes a few objects per submodule.
inline constexpr size_t kMaxPickleValues = size_t{1} << 22;

// One opcode of a pickle, as PickleReader reads it: which one, where, and its
// argument, decoded by the one opcode table of protocols 0 to 5 (in
// pickle_scan.cpp, after Lib/pickletools.py). The views point into the
// pickle.
struct PickleOp {
  uint8_t code = 0;
  const char* name = nullptr;  // "BINUNICODE"
  size_t at = 0;               // offset of the opcode byte
  uint64_t number = 0;         // an integer argument, little-endian (BININT's int4 as its 32 bits)
  std::string_view arg;        // a length-prefixed or newline-ended argument (GLOBAL, INST: the module)
  std::string_view second;     // GLOBAL, INST: the name
};

// Reads a pickle's opcodes one at a time with their arguments, checking
// before every read; never reads outside the bytes. Says nothing of what
// they do: the callers (scan_pickle, zcwrap run's input check) model that.
class PickleReader {
 public:
  explicit PickleReader(std::string_view pickle) : p_(pickle) {}

  // The next opcode and its argument. False at the end of the bytes, or
  // with error() set: an unknown opcode, an argument past the end, a
  // negative length.
  bool next(PickleOp* op);
  // What went wrong, with the opcode's name (not its offset: PickleOp::at).
  const std::string& error() const { return error_; }
  size_t position() const { return pos_; }

 private:
  bool take(uint64_t n, const char* name, std::string_view* out);
  bool little_endian(size_t n, const char* name, uint64_t* out);
  bool line(const char* name, std::string_view* out);

  std::string_view p_;
  size_t pos_ = 0;
  std::string error_;
};

// One global a pickle imports: what the unpickler's find_class is asked for.
struct PickleGlobal {
  std::string module;  // "torch.nn.modules.linear"
  std::string name;    // "Linear"; a qualified name may hold dots ("Outer.Inner")
  std::string text() const { return module + "." + name; }
  friend bool operator<(const PickleGlobal& a, const PickleGlobal& b) {
    return a.module != b.module ? a.module < b.module : a.name < b.name;
  }
  friend bool operator==(const PickleGlobal& a, const PickleGlobal& b) {
    return a.module == b.module && a.name == b.name;
  }
};

struct PickleScan {
  std::vector<PickleGlobal> globals;  // sorted, each once
  std::string error;                  // why the pickle cannot be read; empty when it was
};

// Lists every global `pickle` makes the unpickler import (GLOBAL, INST, and
// STACK_GLOBAL, whose operands are followed through the string opcodes, DUP
// and the memo: PUT, BINPUT, LONG_BINPUT, MEMOIZE and the GETs), reading
// protocols 0 to 5. Nothing is run or imported. The stack is modelled value
// for value (marks included), so a STACK_GLOBAL whose operands are not
// strings the pickle itself spells out (a value computed at load time, a
// string with escapes, bytes), an import through copyreg's extension
// registry (EXT1/2/4), an unknown opcode, a truncated pickle, a stack
// underflow or more than kMaxPickleValues values make `error` say what and
// at which byte, and `globals` is then incomplete. Never reads outside
// `pickle`; memory stays proportional to the values tracked.
PickleScan scan_pickle(std::string_view pickle);

// scan_pickle's globals; when the pickle cannot be read, throws
// Error(kBadBlob) "<what>: cannot tell what its pickle imports: <error>".
std::vector<PickleGlobal> pickle_globals(std::string_view pickle, const std::string& what);

// Whether `g` lies beyond what rebuilds tensors and modules: not a torch
// type, dtype or tensor class, a torch._utils._rebuild_* function, a
// torch.nn module class or function, nor one of the plain Python types
// torch.load's weights-only allowlist accepts (collections.OrderedDict and
// Counter, builtins.set, bytearray and complex, _codecs.encode). Everything
// else, torch's own loaders included (torch.storage._load_from_bytes runs
// torch.load), counts as code. Judged by name only: what `zcwrap verify`
// points out. weights_only decides in Python, with torch's own list.
bool beyond_torch(const PickleGlobal& g);

}  // namespace zcwrap::detail
