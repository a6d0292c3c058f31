// Test helpers that need no LibTorch: fixtures, temporary folders, running
// the zcwrap binary. See torch_support.hpp for the LibTorch ones.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace zcwrap::test {

// A test executable that needs child processes sets this (from a static
// initializer); `EXE --child ...` then runs it instead of the tests.
extern int (*child_main)(int argc, char** argv);

// Folder of the generated fixtures ($ZCWRAP_FIXTURES), and their index.
std::string fixtures_dir();
std::string fixture(const std::string& file);
const nlohmann::json& fixtures_index();

// The zcwrap binary under test ($ZCWRAP_BIN).
std::string zcwrap_bin();

// The lane's Python ($ZCWRAP_PYTHON, meson's -Dpython): its torch is the one
// the fixtures were made with and every result is compared against.
std::string python();

// A fresh folder under $TMPDIR, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct ProcessResult {
  int status = -1;  // exit status, or 128 + signal
  std::string out;
  std::string err;
};

// Runs argv[0] with the arguments and waits; captures stdout and stderr.
ProcessResult run_process(const std::vector<std::string>& argv);

// A child process whose stdin and stdout are pipes held here.
struct Child {
  pid_t pid = -1;
  int in = -1;   // write end of its stdin
  int out = -1;  // read end of its stdout
};

// Starts argv[0] with the arguments (stderr is inherited). Throws
// std::runtime_error when it cannot be started.
Child spawn_child(const std::vector<std::string>& argv);

// One line from `fd`, without its newline ("" at end of file).
std::string read_line(int fd);

// Waits for `pid`: its exit status, or 128 + the signal that ended it.
int wait_child(pid_t pid);

std::string read_bytes(const std::string& path);
void write_bytes(const std::string& path, const std::string& bytes);
bool file_exists(const std::string& path);
std::vector<std::string> list_dir(const std::string& path);

}  // namespace zcwrap::test
