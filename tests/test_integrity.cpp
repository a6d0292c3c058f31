// Integrity under stress: kill -9 during pack, re-pack while workers run,
// writes to weights, corrupt data caught by verify and by unwrap.
#include "torch_support.hpp"  // first: see there

#include <fcntl.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>


using nlohmann::json;
using zcwrap::Error;
using zcwrap::ErrorCode;
using zcwrap::Layout;
using zcwrap::ModelWrapper;
namespace test = zcwrap::test;

namespace {

// EXE --child infer BLOB INPUT: unwrap, run forward until stdin closes,
//   checking each output equals the first; prints "ready", then "ok N".
// EXE --child write BLOB [cow]: unwrap and add 1 to the first parameter in
//   place; prints its first element before and after.
// EXE --child truncate BLOB: unwrap, cut the file to its first page, then
//   read every parameter; prints "read" if that worked.
int integrity_child(int argc, char** argv) {
  const std::string mode = argc > 2 ? argv[2] : "";
  try {
    if (mode == "infer" && argc == 5) {
      zcwrap::Unwrapped u = ModelWrapper::open(argv[3]).unwrap();
      const std::vector<c10::IValue> inputs = test::load_inputs(argv[4]);
      const c10::IValue first = test::call(u.module(), "forward", inputs);
      std::cout << "ready" << std::endl;
      // Nonblocking stdin: keep running inference until the parent closes it.
      ::fcntl(0, F_SETFL, ::fcntl(0, F_GETFL) | O_NONBLOCK);
      long runs = 0;
      for (;;) {
        std::string why;
        if (!test::bit_equal(first, test::call(u.module(), "forward", inputs), &why)) {
          std::cout << "changed " << why << std::endl;
          return 1;
        }
        ++runs;
        char c;
        if (::read(0, &c, 1) == 0) break;
      }
      std::cout << "ok " << runs << std::endl;
      return 0;
    }
    if (mode == "truncate" && argc == 4) {
      zcwrap::Unwrapped u = ModelWrapper::open(argv[3]).unwrap();
      if (::truncate(argv[3], 4096) != 0) return 3;
      float sum = 0;
      for (const at::Tensor& p : u.module().parameters()) sum += p.sum().item<float>();
      std::cout << "read " << sum << std::endl;
      return 0;
    }
    if (mode == "write" && argc >= 4) {
      zcwrap::UnwrapOptions options;
      options.copy_on_write = argc > 4 && std::string(argv[4]) == "cow";
      zcwrap::Unwrapped u = ModelWrapper::open(argv[3]).unwrap(options);
      at::Tensor weight = (*u.module().parameters().begin());
      std::cout << "before " << weight.flatten()[0].item<float>() << std::endl;
      torch::NoGradGuard no_grad;
      weight.add_(1.0);
      std::cout << "after " << weight.flatten()[0].item<float>() << std::endl;
      return 0;
    }
  } catch (const std::exception& e) {
    std::cout << "failed " << e.what() << std::endl;
    return 1;
  }
  return 2;
}

const bool registered = (test::child_main = &integrity_child, true);

// What a reader finds at `path`: "absent", "old" (byte-identical to `old`),
// "new" (a complete blob that verifies), or "broken".
std::string state_of(const std::string& path, const std::string& old) {
  if (!test::file_exists(path)) return "absent";
  if (test::read_bytes(path) == old) return "old";
  try {
    return zcwrap::verify(path).ok ? "new" : "broken";
  } catch (const Error&) {
    return "broken";
  }
}

}  // namespace

TEST_CASE("kill -9 at random points of zcwrap pack never leaves a partial blob that opens") {
  test::TempDir dir;
  const std::string dest = dir / "m.zcb";
  REQUIRE(test::run_process({test::zcwrap_bin(), "pack", test::fixture("lstm.pt"), "-o", dest}).status == 0);
  const std::string old = test::read_bytes(dest);

  // How long a whole pack of the larger model takes here, to spread the kills over it.
  const auto t0 = std::chrono::steady_clock::now();
  REQUIRE(test::run_process({test::zcwrap_bin(), "pack", test::fixture("resnet18_scripted.pt"), "-o", dir / "t.zcb"})
              .status == 0);
  const auto full = std::chrono::steady_clock::now() - t0;
  const long full_us = std::chrono::duration_cast<std::chrono::microseconds>(full).count();

  std::mt19937 rng(2026);
  std::map<std::string, int> seen;
  const int trials = 24;
  for (int trial = 0; trial < trials; ++trial) {
    test::write_bytes(dest, old);
    const long delay_us = static_cast<long>(rng() % static_cast<uint32_t>(full_us * 11 / 10));
    test::Child c =
        test::spawn_child({test::zcwrap_bin(), "pack", "-q", test::fixture("resnet18_scripted.pt"), "-o", dest});
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    ::kill(c.pid, SIGKILL);
    test::wait_child(c.pid);
    ::close(c.in);
    ::close(c.out);
    const std::string state = state_of(dest, old);
    CAPTURE(trial);
    CAPTURE(delay_us);
    CHECK(state != "broken");
    CHECK(state != "absent");
    ++seen[state];
  }
  MESSAGE("full pack " << full_us / 1000 << " ms; " << trials << " kills: " << seen["old"] << " left the old blob, "
                       << seen["new"] << " the new one, " << seen["broken"] << " a broken one");
  // A successful pack leaves no temporary files behind.
  REQUIRE(test::run_process({test::zcwrap_bin(), "pack", "-q", test::fixture("lstm.pt"), "-o", dest}).status == 0);
  for (const std::string& name : test::list_dir(dir.path())) {
    if (name.find(".tmp-") != std::string::npos) ::unlink((dir / name).c_str());  // from the killed runs
  }
  REQUIRE(test::run_process({test::zcwrap_bin(), "pack", "-q", test::fixture("lstm.pt"), "-o", dest}).status == 0);
  for (const std::string& name : test::list_dir(dir.path())) CHECK(name.find(".tmp-") == std::string::npos);
}

TEST_CASE("re-packing under 4 live workers: they keep the old weights, new workers get the new blob") {
  test::TempDir dir;
  const std::string blob = dir / "live.zcb";
  const std::string self = "/proc/self/exe";
  REQUIRE(test::run_process({test::zcwrap_bin(), "pack", "-q", test::fixture("transformer.pt"), "-o", blob}).status == 0);
  std::vector<test::Child> workers;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(test::spawn_child({self, "--child", "infer", blob, test::fixture("transformer_in.pt")}));
  }
  for (test::Child& w : workers) REQUIRE(test::read_line(w.out) == "ready");
  for (int round = 0; round < 3; ++round) {
    const char* model = round % 2 == 0 ? "lstm.pt" : "many_params.pt";
    REQUIRE(test::run_process({test::zcwrap_bin(), "pack", "-q", test::fixture(model), "-o", blob}).status == 0);
  }
  for (test::Child& w : workers) {
    ::close(w.in);
    const std::string verdict = test::read_line(w.out);
    CHECK_MESSAGE(verdict.rfind("ok ", 0) == 0, verdict);
    CHECK(test::wait_child(w.pid) == 0);  // no SIGBUS
    ::close(w.out);
  }
  // A worker started now sees the last blob packed (lstm).
  zcwrap::Unwrapped fresh = ModelWrapper::open(blob).unwrap();
  std::string why;
  CHECK(test::bit_equal(test::reference_output(test::fixture("lstm.pt"), "forward", test::fixture("lstm_in.pt")),
                        test::call(fresh.module(), "forward", test::load_inputs(test::fixture("lstm_in.pt"))), &why));
}

TEST_CASE("a blob truncated under a worker kills it with one line saying so, not a bare SIGBUS") {
  test::TempDir dir;
  const std::string blob = dir / "t.zcb";
  ModelWrapper::pack_files({{"m", test::fixture("lstm.pt")}}, Layout::kStandalone, blob);
  const test::ProcessResult crashed = test::run_process({"/proc/self/exe", "--child", "truncate", blob});
  CHECK(crashed.status == 128 + SIGBUS);
  CHECK_MESSAGE(crashed.err.find("zcwrap: fatal: " + blob + " shrank while mapped (SIGBUS reading a weight)") !=
                    std::string::npos,
                crashed.err);
  CHECK(crashed.out.find("read") == std::string::npos);
}

TEST_CASE("a write to a shared weight fails that worker only, with a clear message") {
  test::TempDir dir;
  const std::string blob = dir / "w.zcb";
  ModelWrapper::pack_files({{"m", test::fixture("lstm.pt")}}, Layout::kStandalone, blob);
  const std::string self = "/proc/self/exe";

  const test::ProcessResult crashed = test::run_process({self, "--child", "write", blob});
  CHECK(crashed.status == 128 + SIGSEGV);
  CHECK_MESSAGE(crashed.err.find("zcwrap: fatal: write to a read-only weight of " + blob) != std::string::npos,
                crashed.err);
  CHECK(crashed.out.find("after") == std::string::npos);

  SUBCASE("copy-on-write keeps the write private") {
    const test::ProcessResult cow = test::run_process({self, "--child", "write", blob, "cow"});
    CHECK(cow.status == 0);
    std::istringstream lines(cow.out);
    std::string word;
    float before = 0, after = 0;
    lines >> word >> before >> word >> after;
    CHECK(after == doctest::Approx(before + 1.0f));
  }
  // Either way the blob and other workers keep the original values.
  CHECK(zcwrap::verify(blob).ok);
  std::string why;
  zcwrap::Unwrapped u = ModelWrapper::open(blob).unwrap();
  CHECK(test::bit_equal(test::reference_output(test::fixture("lstm.pt"), "forward", test::fixture("lstm_in.pt")),
                        test::call(u.module(), "forward", test::load_inputs(test::fixture("lstm_in.pt"))), &why));
}

TEST_CASE("a flipped data byte is caught by verify and by unwrap with verification, not by a plain open") {
  test::TempDir dir;
  const std::string blob = dir / "d.zcb";
  ModelWrapper::pack_files({{"m", test::fixture("edge.pt")}}, Layout::kStandalone, blob);
  const json info = zcwrap::describe(blob);
  std::string bytes = test::read_bytes(blob);
  // Flip a bit inside the weights of a.weight.
  uint64_t offset = 0;
  for (const json& t : info["models"][0]["tensors"]) {
    if (t["path"] == "a.weight") offset = t["offset"].get<uint64_t>() + 17;
  }
  REQUIRE(offset > 0);
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x04);
  test::write_bytes(blob, bytes);

  const json report = zcwrap::verify(blob, 2);
  CHECK(report["ok"] == false);
  REQUIRE(report["bad"].size() == 1);
  CHECK(report["bad"][0]["tensor"].get<std::string>().find("a.weight") != std::string::npos);

  const test::ProcessResult cli = test::run_process({test::zcwrap_bin(), "verify", blob});
  CHECK(cli.status == 4);
  CHECK(cli.err.find("a.weight") != std::string::npos);

  zcwrap::UnwrapOptions options;
  options.verify = true;
  std::string message;
  try {
    ModelWrapper::open(blob).unwrap(options);
  } catch (const Error& e) {
    message = e.what();
    CHECK(e.code() == ErrorCode::kBadBlob);
  }
  CHECK(message.find("fails its checksum") != std::string::npos);
  ::setenv("ZCWRAP_VERIFY", "1", 1);
  CHECK_THROWS_AS(ModelWrapper::open(blob).unwrap(), Error);
  ::unsetenv("ZCWRAP_VERIFY");
  CHECK_NOTHROW(ModelWrapper::open(blob).unwrap());  // cheap checks only: the data is not read
}

TEST_CASE("prefetch modes unwrap the same model; a refused mlock is a warning") {
  test::TempDir dir;
  const std::string blob = dir / "p.zcb";
  ModelWrapper::pack_files({{"m", test::fixture("transformer.pt")}}, Layout::kStandalone, blob);
  const c10::IValue expected =
      test::reference_output(test::fixture("transformer.pt"), "forward", test::fixture("transformer_in.pt"));
  for (zcwrap::Prefetch mode : {zcwrap::Prefetch::kNone, zcwrap::Prefetch::kWillNeed, zcwrap::Prefetch::kPopulate,
                                zcwrap::Prefetch::kLock}) {
    zcwrap::UnwrapOptions options;
    options.prefetch = mode;
    zcwrap::Unwrapped u = ModelWrapper::open(blob).unwrap(options);
    std::string why;
    CHECK(test::bit_equal(expected, test::call(u.module(), "forward", test::load_inputs(test::fixture("transformer_in.pt"))),
                          &why));
    for (const std::string& w : u.warnings()) CHECK(w.find("RLIMIT_MEMLOCK") != std::string::npos);
  }
}

TEST_CASE("pack opens nothing it wrote: the wrapper's pins come from what was written") {
  // Mapping the new blob back (as from_actor did) could fail once the blob
  // was in place, under a tight address-space limit, with a message blaming
  // the actor config. inotify sees every open of the blob after its rename.
  test::TempDir dir;
  const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::inotify_add_watch(fd, dir.path().c_str(), IN_OPEN | IN_MOVED_TO) >= 0);
  const ModelWrapper w =
      ModelWrapper::pack_files({{"m", test::fixture("lstm.pt")}}, Layout::kStandalone, dir / "m.zcb");
  std::vector<std::string> events;  // "moved" or "open", for m.zcb only, in order
  alignas(inotify_event) char buffer[1 << 16];
  for (ssize_t n; (n = ::read(fd, buffer, sizeof buffer)) > 0;) {
    for (char* at = buffer; at < buffer + n;) {
      const auto* e = reinterpret_cast<const inotify_event*>(at);
      if (e->len > 0 && std::string(e->name) == "m.zcb") events.push_back(e->mask & IN_MOVED_TO ? "moved" : "open");
      at += sizeof(inotify_event) + e->len;
    }
  }
  ::close(fd);
  REQUIRE(std::find(events.begin(), events.end(), "moved") != events.end());
  CHECK(std::find(std::find(events.begin(), events.end(), "moved"), events.end(), "open") == events.end());
  // The pins are right: the blob opens against them.
  CHECK(w.blob_size() == test::read_bytes(dir / "m.zcb").size());
  CHECK(ModelWrapper::from_actor(w.to_actor()).meta_checksum() == w.meta_checksum());
}
