// Two worker processes that unwrap the same blob share its pages: the
// weights are in memory once, not once per process.
#include "torch_support.hpp"  // first: see there

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>

extern char** environ;

namespace test = zcwrap::test;

namespace {

// EXE --child BLOB: unwrap, read every weight byte, say "ready", then wait
// until stdin closes.
int sharing_child(int argc, char** argv) {
  if (argc < 3) return 2;
  try {
    zcwrap::Unwrapped u = zcwrap::ModelWrapper::open(argv[2]).unwrap();
    double sum = 0;
    for (const auto& p : u.module().named_parameters()) sum += p.value.sum().item<double>();
    std::cout << "ready " << (sum == sum ? "ok" : "nan") << std::endl;
    char c;
    while (::read(0, &c, 1) > 0) {
    }
    return 0;
  } catch (const std::exception& e) {
    std::cout << "failed " << e.what() << std::endl;
    return 1;
  }
}

const bool registered = (test::child_main = &sharing_child, true);

struct Child {
  pid_t pid = -1;
  int to_child = -1;
  int from_child = -1;
};

Child start_child(const std::string& blob) {
  int in[2], out[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_addclose(&actions, in[1]);
  posix_spawn_file_actions_addclose(&actions, out[0]);
  std::string self = "/proc/self/exe";
  std::vector<char*> args = {self.data(), const_cast<char*>("--child"), const_cast<char*>(blob.c_str()), nullptr};
  Child c;
  REQUIRE(::posix_spawn(&c.pid, "/proc/self/exe", &actions, nullptr, args.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);
  ::close(in[0]);
  ::close(out[1]);
  c.to_child = in[1];
  c.from_child = out[0];
  return c;
}

std::string read_line(int fd) {
  std::string line;
  char ch;
  while (::read(fd, &ch, 1) == 1 && ch != '\n') line += ch;
  return line;
}

// Rss and Pss (kB) of the child's mapping of `blob`, from /proc/PID/smaps.
std::pair<long, long> mapping_memory(pid_t pid, const std::string& blob) {
  std::ifstream smaps("/proc/" + std::to_string(pid) + "/smaps");
  std::string line;
  bool in_blob = false;
  long rss = 0, pss = 0;
  while (std::getline(smaps, line)) {
    if (line.find('-') != std::string::npos && line.find(' ') != std::string::npos &&
        std::isxdigit(static_cast<unsigned char>(line[0])) && line.find(':') > line.find(' ')) {
      in_blob = line.size() >= blob.size() && line.compare(line.size() - blob.size(), blob.size(), blob) == 0;
      continue;
    }
    if (!in_blob) continue;
    std::istringstream fields(line);
    std::string key;
    long kb = 0;
    fields >> key >> kb;
    if (key == "Rss:") rss += kb;
    if (key == "Pss:") pss += kb;
  }
  return {rss, pss};
}

}  // namespace

TEST_CASE("two processes that unwrap one blob share its pages") {
  test::TempDir dir;
  const std::string blob = dir / "resnet.zcb";
  zcwrap::ModelWrapper::pack_files({{"m", test::fixture("resnet18_scripted.pt")}}, true, blob);
  const long weights_kb = static_cast<long>(zcwrap::describe(blob)["storages"]["bytes"].get<uint64_t>() / 1024);

  Child a = start_child(blob);
  Child b = start_child(blob);
  CHECK(read_line(a.from_child) == "ready ok");
  CHECK(read_line(b.from_child) == "ready ok");
  const auto [rss_a, pss_a] = mapping_memory(a.pid, blob);
  const auto [rss_b, pss_b] = mapping_memory(b.pid, blob);
  MESSAGE("weights " << weights_kb << " kB; child A maps Rss " << rss_a << " kB Pss " << pss_a << " kB; child B Rss "
                     << rss_b << " kB Pss " << pss_b << " kB");
  // Each process has every weight page resident through the mapping...
  CHECK(rss_a >= weights_kb * 9 / 10);
  CHECK(rss_b >= weights_kb * 9 / 10);
  // ...but the two account for one copy between them (Pss splits a shared
  // page between its users), not one each.
  CHECK(pss_a + pss_b <= rss_a * 11 / 10);
  CHECK(pss_a <= rss_a * 6 / 10);

  for (Child* c : {&a, &b}) {
    ::close(c->to_child);
    int status = 0;
    ::waitpid(c->pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    ::close(c->from_child);
  }
}
