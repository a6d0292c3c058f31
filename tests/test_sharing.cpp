// Two worker processes that unwrap the same blob share its pages: the
// weights are in memory once, not once per process.
#include "torch_support.hpp"  // first: see there

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>


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
  zcwrap::ModelWrapper::pack_files({{"m", test::fixture("resnet18_scripted.pt")}}, zcwrap::Layout::kStandalone, blob);
  const long weights_kb = static_cast<long>(zcwrap::describe(blob).storage_bytes / 1024);

  const std::vector<std::string> child = {"/proc/self/exe", "--child", blob};
  test::Child a = test::spawn_child(child);
  test::Child b = test::spawn_child(child);
  CHECK(test::read_line(a.out) == "ready ok");
  CHECK(test::read_line(b.out) == "ready ok");
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

  for (test::Child* c : {&a, &b}) {
    ::close(c->in);
    CHECK(test::wait_child(c->pid) == 0);
    ::close(c->out);
  }
}
