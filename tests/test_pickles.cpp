// The pickle scanner (runtime/pickle_scan.hpp): what a pickle imports, read
// from its opcodes without running it. Handcrafted cases with their verdicts,
// Python's own pickles checked against Python's own find_class calls, and a
// seeded mutation run that must never crash or read outside the bytes.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pickle_scan.hpp"
#include "support.hpp"

using nlohmann::json;
using zcwrap::detail::PickleScan;
using zcwrap::detail::scan_pickle;
namespace test = zcwrap::test;

namespace {

std::vector<std::string> texts(const PickleScan& scan) {
  std::vector<std::string> out;
  for (const auto& g : scan.globals) out.push_back(g.text());
  return out;
}

struct Case {
  const char* name;
  std::string pickle;
  std::vector<std::string> globals;  // when `error` is empty
  const char* error;                 // a part of the expected error; "" for none
};

using namespace std::string_literals;

// Every case names a different way to reach a global, or to fail to.
const std::vector<Case>& cases() {
  static const std::vector<Case> table = {
      {"PROTOCOL0_GLOBAL_REDUCE", "cos\nsystem\n(S'echo hi'\ntR."s, {"os.system"}, ""},
      {"PROTOCOL0_INST", "(S'echo hi'\nios\nsystem\n."s, {"os.system"}, ""},
      {"PROTOCOL0_TEXT_MEMO_GET_PUT", "Vos\np0\n0Vsystem\np1\n0g0\ng1\n\x93."s, {"os.system"}, ""},
      {"PROTOCOL2_GLOBAL_BINPUT", "\x80\x02" "cposix\nsystem\nq\x00X\x02\x00\x00\x00hi\x85Rq\x01."s,
       {"posix.system"}, ""},
      {"PROTOCOL4_STACK_GLOBAL_MEMOIZE",
       "\x80\x04\x95\x13\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94."s, {"os.system"}, ""},
      {"PROTOCOL5_STACK_GLOBAL_VIA_BINGET",
       "\x80\x05\x8c\x05posix\x94\x8c\x06getcwd\x93)R0h\x00\x8c\x06system\x93."s, {"posix.getcwd", "posix.system"},
       ""},
      {"LONG_BINPUT_LONG_BINGET", "\x80\x04\x8c\x02osr\x10\x00\x00\x00" "0j\x10\x00\x00\x00\x8c\x06system\x93."s,
       {"os.system"}, ""},
      {"DUP_COPIES_A_STRING", "\x80\x04\x8c\x04" "eval2\x93."s, {"eval.eval"}, ""},
      {"STRING_AND_BINSTRING_OPERANDS", "S'os'\nT\x06\x00\x00\x00system\x93."s, {"os.system"}, ""},
      {"SHORT_BINSTRING_AND_BINUNICODE8",
       "U\x08" "builtins\x8d\x04\x00\x00\x00\x00\x00\x00\x00" "eval\x93."s, {"builtins.eval"}, ""},
      {"POP_REMOVES_AN_EMPTY_MARK", "\x80\x04\x8c\x02os(0\x8c\x06system\x93."s, {"os.system"}, ""},
      {"QUALIFIED_NAME", "\x80\x04\x8c\x0b" "collections\x8c\x14OrderedDict.fromkeys\x93."s,
       {"collections.OrderedDict.fromkeys"}, ""},
      {"NO_GLOBALS", "\x80\x05]\x94(K\x01K\x02" "e."s, {}, ""},
      {"A_MARK_FENCES_THE_STACK", "\x80\x04\x8c\x02os(\x8c\x06system\x93."s, {}, "stack underflow"},
      {"COMPUTED_MODULE_NAME", "\x80\x04" "cbuiltins\nstr\n\x8c\x02os\x85R\x8c\x06system\x93."s, {},
       "not a string spelled out"},
      {"BYTES_OPERAND", "\x80\x04" "C\x02os\x8c\x06system\x93."s, {}, "not a string spelled out"},
      {"ESCAPED_STRING_OPERAND", "S'o\\x73'\nS'system'\n\x93."s, {}, "not a string spelled out"},
      {"RAW_UNICODE_ESCAPE_OPERAND", "Vo\\u0073\nVsystem\n\x93."s, {}, "not a string spelled out"},
      {"NON_ASCII_BINSTRING_OPERAND", "U\x02o\xf3" "U\x06system\x93."s, {}, "not a string spelled out"},
      {"UNQUOTED_STRING", "S'os\n."s, {}, "not quoted"},
      {"TRUNCATED_GLOBAL", "\x80\x02" "cos\nsys"s, {}, "truncated"},
      {"TRUNCATED_BINUNICODE", "\x80\x04X\xff\x00\x00\x00" "abc"s, {}, "truncated"},
      {"TRUNCATED_FRAME_LENGTH", "\x80\x04\x95\x01\x00"s, {}, "truncated"},
      {"NO_STOP", "\x80\x02N"s, {}, "ends before its STOP"},
      {"EMPTY", ""s, {}, "ends before its STOP"},
      {"GARBAGE_OPCODE", "\x80\x02\xff."s, {}, "0xff is not a pickle opcode"},
      {"MEMO_NEVER_SET", "\x80\x02h\x05."s, {}, "memo entry 5 was never set"},
      {"PUT_ON_EMPTY_STACK", "\x80\x02q\x00."s, {}, "stack underflow"},
      {"EXTENSION_CODE", "\x80\x02\x82\x01."s, {}, "extension code 1"},
      {"PROTOCOL_6", "\x80\x06N."s, {}, "protocol 6"},
      {"NEGATIVE_BINSTRING_LENGTH", "T\xff\xff\xff\xff"s, {}, "negative length"},
      {"APPENDS_WITHOUT_CONTAINER", "(Ne."s, {}, "stack underflow"},
      {"INST_WITHOUT_MARK", "ios\nsystem\n."s, {}, "no MARK"},
      {"GET_WITH_A_SIGN", "g+1\n."s, {}, "not a memo index"},
  };
  return table;
}

}  // namespace

TEST_CASE("scan_pickle: a table of handcrafted pickles and their verdicts") {
  for (const Case& c : cases()) {
    CAPTURE(c.name);
    const PickleScan scan = scan_pickle(c.pickle);
    if (*c.error == '\0') {
      CHECK_MESSAGE(scan.error.empty(), scan.error);
      CHECK(texts(scan) == c.globals);
    } else {
      CHECK_MESSAGE(scan.error.find(c.error) != std::string::npos, scan.error);
      CHECK(scan.error.rfind("byte ", 0) == 0);  // where it went wrong
    }
  }
}

TEST_CASE("scan_pickle: the globals Python's own pickles make find_class import, protocols 0 to 5") {
  // Python pickles plain objects at every protocol and records what its
  // unpickler's find_class is asked for; the scanner must list the same.
  const char* script = R"PY(
import collections, datetime, decimal, fractions, io, json, pickle, types
class Recorder(pickle.Unpickler):
    def __init__(self, data):
        super().__init__(io.BytesIO(data), fix_imports=False)
        self.seen = set()
    def find_class(self, module, name):
        self.seen.add(module + "." + name)
        return super().find_class(module, name)
objects = [collections.OrderedDict(a=1), datetime.date(2020, 1, 2), fractions.Fraction(1, 3), {1, 2},
           frozenset([3]), complex(1, 2), bytearray(b"xy"), b"bytes", collections.Counter("abca"),
           types.SimpleNamespace(x=[1, 2], y="os"), decimal.Decimal("1.5"),
           [datetime.timedelta(3), collections.deque([1]), "system", "system"], range(3), slice(1, 2)]
out = []
for protocol in range(6):
    for obj in objects:
        data = pickle.dumps(obj, protocol=protocol, fix_imports=False)
        recorder = Recorder(data)
        recorder.load()
        out.append({"protocol": protocol, "object": repr(obj), "hex": data.hex(), "globals": sorted(recorder.seen)})
print(json.dumps(out))
)PY";
  const test::ProcessResult py = test::run_process({test::python(), "-c", script});
  REQUIRE_MESSAGE(py.status == 0, py.err);
  const json reference = json::parse(py.out);
  REQUIRE(reference.size() >= 6 * 10);
  size_t with_globals = 0;
  for (const json& r : reference) {
    CAPTURE(r["protocol"].get<int>());
    CAPTURE(r["object"].get<std::string>());
    std::string pickle;
    const std::string hex = r["hex"];
    for (size_t i = 0; i + 1 < hex.size(); i += 2) pickle += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
    const PickleScan scan = scan_pickle(pickle);
    CHECK_MESSAGE(scan.error.empty(), scan.error);
    CHECK(texts(scan) == r["globals"].get<std::vector<std::string>>());
    with_globals += !scan.globals.empty();
  }
  CHECK(with_globals > reference.size() / 2);  // the comparison is not between empty lists
}

TEST_CASE("scan_pickle: seeded mutations never crash, and list only names the bytes spell") {
  std::mt19937 rng(19);
  for (const Case& c : cases()) {
    if (c.pickle.size() < 4) continue;
    for (int round = 0; round < 300; ++round) {
      std::string p = c.pickle;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits; ++e) {
        const size_t at = rng() % p.size();
        switch (rng() % 3) {
          case 0: p[at] = static_cast<char>(rng()); break;
          case 1: p.erase(at, 1 + rng() % 3); break;
          default: p.insert(at, 1, static_cast<char>(rng())); break;
        }
        if (p.empty()) p.push_back(static_cast<char>(0x80));
      }
      const PickleScan scan = scan_pickle(p);
      CHECK(scan.globals.size() <= p.size());  // each global costs at least an opcode
      for (const auto& g : scan.globals) {  // names are taken as written, never made up
        CHECK(p.find(g.module) != std::string::npos);
        CHECK(p.find(g.name) != std::string::npos);
      }
    }
  }
}
