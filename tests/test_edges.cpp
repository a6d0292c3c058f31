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

  // A device node of our own (needs root; CI runs as root).
  const std::string node = p.dir / "mynull";
  if (::mknod(node.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) {
    MESSAGE("mknod is not permitted here (" << std::strerror(errno) << "): the device-node case is skipped");
    return;
  }
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
