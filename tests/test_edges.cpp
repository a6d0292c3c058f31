// Outputs and inputs at the edges (issue: reliability): an output that is an
// input is refused before anything is written; -o through a symbolic link, to
// a device or to standard output writes where the user means; an input that
// is not a regular file (FIFO, device) is refused at once instead of hanging.
// Every case drives the zcwrap binary as a user would.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "cli_support.hpp"
#include "support.hpp"

namespace test = zcwrap::test;
using test::check_failure;
using test::run_cli;

namespace {

// A folder with a small model, its input, and a blob and config packed from it.
struct Packed {
  test::TempDir dir;
  std::string model = dir / "m.pt";
  std::string input = dir / "in.pt";
  std::string blob = dir / "m.zcb";
  std::string config = dir / "m.actor.json";

  Packed() {
    test::write_bytes(model, test::read_bytes(test::fixture("lstm.pt")));
    test::write_bytes(input, test::read_bytes(test::fixture("lstm_in.pt")));
    const test::ProcessResult r = run_cli({"pack", "-q", model, "-o", blob});
    REQUIRE_MESSAGE(r.status == 0, r.err);
  }
};

bool is_char_device(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}

bool is_symlink(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}

}  // namespace

TEST_CASE("an output that is an input is refused, and every file stays as it was") {
  Packed p;
  REQUIRE(::symlink(p.blob.c_str(), (p.dir / "link.zcb").c_str()) == 0);
  const std::string model_bytes = test::read_bytes(p.model);
  const std::string blob_bytes = test::read_bytes(p.blob);
  const std::string config_bytes = test::read_bytes(p.config);
  const std::string input_bytes = test::read_bytes(p.input);
  struct Case {
    const char* name;
    std::vector<std::string> args;
  };
  const std::vector<Case> cases = {
      {"PACK_OUTPUT_IS_MODEL", {"pack", p.model, "-o", p.model}},
      {"PACK_CONFIG_IS_MODEL", {"pack", p.model, "-o", p.dir / "n.zcb", "--config", p.model}},
      {"PACK_CONFIG_IS_OUTPUT", {"pack", p.model, "-o", p.blob, "--config", p.blob}},
      {"PACK_NEW_CONFIG_IS_NEW_OUTPUT", {"pack", p.model, "-o", p.dir / "x.zcb", "--config", p.dir / "x.zcb"}},
      {"RUN_OUTPUT_IS_BLOB", {"run", p.blob, "-i", p.input, "-o", p.blob}},
      {"RUN_OUTPUT_IS_CONFIG", {"run", p.config, "-i", p.input, "-o", p.config}},
      {"RUN_OUTPUT_IS_BLOB_OF_CONFIG", {"run", p.config, "-i", p.input, "-o", p.blob}},
      {"RUN_OUTPUT_IS_INPUT", {"run", p.blob, "-i", p.input, "-o", p.input}},
      {"RUN_OUTPUT_LINKS_TO_BLOB", {"run", p.blob, "-i", p.input, "-o", p.dir / "link.zcb"}},
      {"UNPACK_OUTPUT_IS_BLOB", {"unpack", p.blob, "-o", p.blob}},
      {"UNPACK_OUTPUT_IS_BLOB_OF_CONFIG", {"unpack", p.config, "-o", p.blob}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    check_failure(run_cli(c.args), 2, "choose another output");
    CHECK(test::read_bytes(p.model) == model_bytes);
    CHECK(test::read_bytes(p.blob) == blob_bytes);
    CHECK(test::read_bytes(p.config) == config_bytes);
    CHECK(test::read_bytes(p.input) == input_bytes);
    CHECK(is_symlink(p.dir / "link.zcb"));
  }
  CHECK_FALSE(test::file_exists(p.dir / "x.zcb"));
  CHECK_FALSE(test::file_exists(p.dir / "n.zcb"));
}

TEST_CASE("-o through a symbolic link replaces its target and keeps the link") {
  Packed p;
  REQUIRE(run_cli({"run", p.blob, "-i", p.input, "-o", p.dir / "plain.pt"}).status == 0);
  test::write_bytes(p.dir / "target.pt", "old");
  REQUIRE(::symlink("target.pt", (p.dir / "out.pt").c_str()) == 0);
  const test::ProcessResult r = run_cli({"run", p.blob, "-i", p.input, "-o", p.dir / "out.pt"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(is_symlink(p.dir / "out.pt"));
  CHECK(test::read_bytes(p.dir / "target.pt") == test::read_bytes(p.dir / "plain.pt"));

  // A dangling link: the file it names is created.
  REQUIRE(::symlink("made.pt", (p.dir / "dangling.pt").c_str()) == 0);
  REQUIRE(run_cli({"run", p.blob, "-i", p.input, "-o", p.dir / "dangling.pt"}).status == 0);
  CHECK(is_symlink(p.dir / "dangling.pt"));
  CHECK(test::read_bytes(p.dir / "made.pt") == test::read_bytes(p.dir / "plain.pt"));
}

TEST_CASE("-o to a character device writes through it instead of replacing it") {
  Packed p;
  // /dev/null itself: it must still be the device afterwards.
  REQUIRE(is_char_device("/dev/null"));
  const test::ProcessResult r = run_cli({"run", p.blob, "-i", p.input, "-o", "/dev/null"});
  CHECK_MESSAGE(r.status == 0, r.err);
  CHECK(is_char_device("/dev/null"));
  CHECK(run_cli({"unpack", p.blob, "-o", "/dev/null", "-q"}).status == 0);
  CHECK(is_char_device("/dev/null"));
}

// Whether this process may make device nodes (root, outside a user namespace
// that forbids it): the case below needs one of its own.
bool can_make_device_nodes() {
  test::TempDir dir;
  return ::mknod((dir / "probe").c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0;
}

TEST_CASE("-o to a device node of our own writes through it; pack refuses it" *
          doctest::skip(!can_make_device_nodes())) {
  Packed p;
  const std::string node = p.dir / "mynull";
  REQUIRE_MESSAGE(::mknod(node.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0, std::strerror(errno));
  CHECK(run_cli({"run", p.blob, "-i", p.input, "-o", node}).status == 0);
  CHECK(is_char_device(node));
  // A blob is mapped by workers, so it must be a regular file.
  check_failure(run_cli({"pack", p.model, "-o", node}), 2, "must be a regular file");
  CHECK(is_char_device(node));
}

TEST_CASE("-o - writes to standard output") {
  Packed p;
  REQUIRE(run_cli({"run", p.blob, "-i", p.input, "-o", p.dir / "plain.pt"}).status == 0);
  const test::ProcessResult r = run_cli({"run", p.blob, "-i", p.input, "-o", "-"});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  CHECK(r.out == test::read_bytes(p.dir / "plain.pt"));

  const test::ProcessResult u = run_cli({"unpack", p.blob, "-o", "-"});
  REQUIRE_MESSAGE(u.status == 0, u.err);
  // A TorchScript archive (a zip), which packs again.
  CHECK(u.out.rfind("PK", 0) == 0);
  test::write_bytes(p.dir / "again.pt", u.out);
  CHECK(run_cli({"pack", "-q", p.dir / "again.pt", "-o", p.dir / "again.zcb"}).status == 0);
}

TEST_CASE("inputs that are not regular files are refused at once") {
  Packed p;
  const std::string fifo = p.dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  nlohmann::json config = nlohmann::json::parse(test::read_bytes(p.config));
  config["blob"] = fifo;
  test::write_bytes(p.dir / "fifo.actor.json", config.dump());
  struct Case {
    const char* name;
    std::vector<std::string> args;
    int status;
    const char* mention;
  };
  const std::vector<Case> cases = {
      {"RUN_BLOB_FIFO", {"run", fifo, "-i", p.input, "-o", p.dir / "o.pt"}, 3, "FIFO"},
      {"RUN_INPUT_FIFO", {"run", p.blob, "-i", fifo, "-o", p.dir / "o.pt"}, 3, "FIFO"},
      {"RUN_INPUT_DEV_ZERO", {"run", p.blob, "-i", "/dev/zero", "-o", p.dir / "o.pt"}, 3, "character device"},
      {"RUN_INPUT_DEV_URANDOM", {"run", p.blob, "-i", "/dev/urandom", "-o", p.dir / "o.pt"}, 3, "character device"},
      {"INSPECT_DEV_ZERO", {"inspect", "/dev/zero"}, 3, "character device"},
      {"VERIFY_FIFO", {"verify", fifo}, 3, "FIFO"},
      {"PACK_MODEL_FIFO", {"pack", fifo, "-o", p.dir / "f.zcb"}, 3, "FIFO"},
      {"UNPACK_FOLDER", {"unpack", p.dir.path(), "-o", p.dir / "u.pt"}, 3, "folder"},
      // The config's blob is a FIFO: the config no longer names a usable blob.
      {"CONFIG_NAMES_FIFO", {"run", p.dir / "fifo.actor.json", "-i", p.input, "-o", p.dir / "o.pt"}, 8, "FIFO"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    check_failure(run_cli(c.args), c.status, c.mention);
  }
  CHECK_FALSE(test::file_exists(p.dir / "o.pt"));
  CHECK_FALSE(test::file_exists(p.dir / "f.zcb"));
}

TEST_CASE("a file name with control characters stays on one visible line") {
  test::TempDir dir;
  const std::string name = dir / "a\nb\x1b[31mred.zcb";
  const test::ProcessResult r = run_cli({"inspect", name});
  check_failure(r, 3, "a\\nb\\x1b[31mred.zcb");
  CHECK(r.err.find('\x1b') == std::string::npos);
}

TEST_CASE("a pack that fails leaves the blob and config it would have replaced as they were") {
  Packed p;
  const std::string blob_bytes = test::read_bytes(p.blob);
  const std::string config_bytes = test::read_bytes(p.config);
  // A byte view of another buffer (see make_fixtures.py, ByteView): LibTorch
  // 1.13 loads it as a tensor past its storage, 2.x refuses it.
  const test::ProcessResult r = run_cli({"pack", test::fixture("byte_view.pt"), "-o", p.blob});
  check_failure(r, 5, "byte_view.pt");
  CHECK(test::read_bytes(p.blob) == blob_bytes);
  CHECK(test::read_bytes(p.config) == config_bytes);
  const test::ProcessResult ok = run_cli({"run", p.config, "-i", p.input, "-o", p.dir / "o.pt"});
  CHECK_MESSAGE(ok.status == 0, ok.err);
  for (const std::string& name : test::list_dir(p.dir.path())) CHECK(name.find(".tmp-") == std::string::npos);
}

TEST_CASE("crafted inputs get one line and exit 3 from run and bench, never a crash") {
  // make_fixtures.py writes each one (bad_inputs in fixtures.json): real
  // torch.save zip files whose pickle was written opcode by opcode.
  Packed p;
  const nlohmann::json& cases = test::fixtures_index()["bad_inputs"];
  REQUIRE(cases.size() >= 10);
  for (const nlohmann::json& c : cases) {
    const std::string file = test::fixture(c["file"].get<std::string>());
    CAPTURE(file);
    CAPTURE(c["why"].get<std::string>());
    // One of the alternatives in "expect" (separated by |): LibTorch 2.x
    // refuses some of these files itself, 1.13 leaves them to zcwrap.
    auto says_expected = [&](const std::string& err) {
      std::stringstream alternatives(c["expect"].get<std::string>());
      for (std::string a; std::getline(alternatives, a, '|');) {
        if (err.find(a) != std::string::npos) return true;
      }
      return false;
    };
    const test::ProcessResult ran = run_cli({"run", p.blob, "-i", file, "-o", p.dir / "o.pt"});
    check_failure(ran, 3, c["file"].get<std::string>());
    CHECK_MESSAGE(says_expected(ran.err), ran.err);
    CHECK_FALSE(test::file_exists(p.dir / "o.pt"));
    const test::ProcessResult bench = run_cli({"bench", p.blob, "--workers", "1", "--input", file});
    check_failure(bench, 3, c["file"].get<std::string>());
    CHECK_MESSAGE(says_expected(bench.err), bench.err);
  }
}

TEST_CASE("a NUL byte in a config's blob path is refused, not cut short at the NUL") {
  Packed p;
  nlohmann::json config = nlohmann::json::parse(test::read_bytes(p.config));
  config["blob"] = p.blob + std::string("\0.old", 5);  // would open p.blob
  test::write_bytes(p.dir / "nul.actor.json", config.dump());
  check_failure(run_cli({"inspect", p.dir / "nul.actor.json"}), 4, "NUL byte");
  check_failure(run_cli({"run", p.dir / "nul.actor.json", "-i", p.input, "-o", p.dir / "o.pt"}), 4, "NUL byte");
  CHECK_FALSE(test::file_exists(p.dir / "o.pt"));
}

TEST_CASE("-o a socket is refused with one line, and nothing is left beside it") {
  Packed p;
  const std::string sock = p.dir / "sock";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(sock.size() < sizeof(addr.sun_path));
  std::memcpy(addr.sun_path, sock.c_str(), sock.size() + 1);
  REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0);
  check_failure(run_cli({"run", p.blob, "-i", p.input, "-o", sock}), 6, "is a socket");
  check_failure(run_cli({"unpack", p.blob, "-o", sock}), 6, "is a socket");
  check_failure(run_cli({"pack", p.model, "-o", sock}), 2, "is a socket");
  ::close(fd);
  for (const std::string& name : test::list_dir(p.dir.path())) CHECK(name.find(".tmp-") == std::string::npos);
}

TEST_CASE("an actor config over 1 MiB is refused before it is read, by every command") {
  Packed p;
  const std::string huge = p.dir / "x.json";
  {
    test::write_bytes(huge, "");
    REQUIRE(::truncate(huge.c_str(), off_t{2} << 30) == 0);  // sparse: 2 GiB that used to be read whole (8 s, 2.2 GB)
  }
  const std::vector<std::vector<std::string>> commands = {
      {"inspect", huge},
      {"inspect", "--json", huge},
      {"verify", huge},
      {"unpack", huge, "-o", p.dir / "o.pt"},
      {"run", huge, "-i", p.input, "-o", p.dir / "o.pt"},
      {"bench", huge, "--workers", "1"},
  };
  for (const std::vector<std::string>& args : commands) {
    CAPTURE(args[0]);
    const auto start = std::chrono::steady_clock::now();
    const test::ProcessResult r = run_cli(args);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    check_failure(r, 4, huge + ": 2147483648 bytes is too large for an actor config (at most 1048576 bytes");
    CHECK_MESSAGE(seconds < 2.0, seconds << " s");
  }
  CHECK_FALSE(test::file_exists(p.dir / "o.pt"));

  // The limit itself: a real config padded with spaces to exactly 1 MiB is
  // read; one byte more is refused.
  const std::string config = test::read_bytes(p.config);
  const size_t limit = size_t{1} << 20;
  REQUIRE(config.size() < limit);
  test::write_bytes(p.dir / "exact.json", config + std::string(limit - config.size(), ' '));
  const test::ProcessResult exact = run_cli({"inspect", p.dir / "exact.json"});
  CHECK_MESSAGE(exact.status == 0, exact.err);
  test::write_bytes(p.dir / "over.json", config + std::string(limit + 1 - config.size(), ' '));
  check_failure(run_cli({"inspect", p.dir / "over.json"}), 4, "1048577 bytes is too large");
}

TEST_CASE("a config field of the wrong type is named, with the type it must be") {
  Packed p;
  const nlohmann::json good = nlohmann::json::parse(test::read_bytes(p.config));
  struct Case {
    const char* name;
    const char* field;
    nlohmann::json value;  // null with `remove`: the field is left out
    bool remove;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"BLOB_NUMBER", "blob", 7, false, "field 'blob' must be a string, not a number (7)"},
      {"BLOB_ARRAY", "blob", nlohmann::json::array({"a"}), false, "field 'blob' must be a string, not an array"},
      {"SIZE_STRING", "blob_size", "12", false, "field 'blob_size' must be a non-negative integer, not a string"},
      {"SIZE_NEGATIVE", "blob_size", -1, false, "field 'blob_size' must be a non-negative integer, not a number (-1)"},
      {"SIZE_FRACTION", "blob_size", 1.5, false, "field 'blob_size' must be a non-negative integer, not a number (1.5)"},
      {"CHECKSUM_NUMBER", "meta_checksum", 5, false, "field 'meta_checksum' must be a string, not a number (5)"},
      {"STANDALONE_STRING", "standalone", "yes", false, "field 'standalone' must be true or false, not a string"},
      {"MODELS_STRING", "models", "model", false, "field 'models' must be an array of model names, not a string"},
      {"MODELS_OF_NUMBERS", "models", nlohmann::json::array({1}), false,
       "field 'models' must be an array of model names (strings), not a number (1)"},
      {"VERSION_STRING", "zcwrap_actor", "1", false, "field 'zcwrap_actor' must be the integer 1, not a string"},
      {"VERSION_2", "zcwrap_actor", 2, false, "unsupported zcwrap_actor version 2"},
      {"NO_BLOB", "blob", nullptr, true, "missing field 'blob'"},
      {"NO_MODELS", "models", nullptr, true, "missing field 'models'"},
  };
  const std::string path = p.dir / "bad.actor.json";
  for (const Case& c : cases) {
    CAPTURE(c.name);
    nlohmann::json config = good;
    if (c.remove) {
      config.erase(c.field);
    } else {
      config[c.field] = c.value;
    }
    test::write_bytes(path, config.dump());
    const test::ProcessResult r = run_cli({"inspect", path});
    check_failure(r, 4, path + ": actor config: " + c.expect);
    CHECK_MESSAGE(r.err.find("json.exception") == std::string::npos, r.err);
  }
  // NaN is not JSON: the file is neither a blob nor a config.
  test::write_bytes(path, "{\"zcwrap_actor\": 1, \"blob_size\": NaN}");
  check_failure(run_cli({"inspect", path}), 4, "neither a zcwrap blob nor an actor config");
}

TEST_CASE("a damaged model file's error is LibTorch's finding, without its advice about checkpoints") {
  test::TempDir dir;
  const test::ProcessResult r = run_cli({"pack", test::fixture("garbage.pt"), "-o", dir / "x.zcb"});
  check_failure(r, 5, "garbage.pt: not a TorchScript archive (PytorchStreamReader failed reading zip archive: "
                      "failed finding central directory)");
  CHECK_MESSAGE(r.err.find("miniz") == std::string::npos, r.err);
  CHECK_MESSAGE(r.err.find("likelihood") == std::string::npos, r.err);
}
