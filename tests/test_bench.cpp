// zcwrap bench's measuring: /proc smaps parsing on captured text, and live
// workers that must really share the blob's pages. No timing is asserted.
#include <doctest/doctest.h>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <set>
#include <thread>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../cli/proc_memory.hpp"
#include "support.hpp"
#include "zcwrap/zcwrap.hpp"

extern char** environ;

using nlohmann::json;
namespace test = zcwrap::test;
using zcwrap::cli::FileId;
using zcwrap::cli::MemoryUsage;
using zcwrap::cli::parse_smaps;

namespace {

// /proc/PID/smaps_rollup of a zcwrap worker, Linux 6.x, as printed.
const char* const kRollup =
    "55d4c0f6f000-7ffd6bb6c000 ---p 00000000 00:00 0                          [rollup]\n"
    "Rss:              133208 kB\n"
    "Pss:               24093 kB\n"
    "Pss_Dirty:          9724 kB\n"
    "Pss_Anon:           8052 kB\n"
    "Pss_File:          16041 kB\n"
    "Pss_Shmem:             0 kB\n"
    "Shared_Clean:     114320 kB\n"
    "Shared_Dirty:          0 kB\n"
    "Private_Clean:     10192 kB\n"
    "Private_Dirty:      8696 kB\n"
    "Referenced:       133208 kB\n"
    "Anonymous:          8052 kB\n"
    "KSM:                   0 kB\n"
    "LazyFree:              0 kB\n"
    "AnonHugePages:         0 kB\n"
    "ShmemPmdMapped:        0 kB\n"
    "FilePmdMapped:      2048 kB\n"
    "Shared_Hugetlb:        0 kB\n"
    "Private_Hugetlb:       0 kB\n"
    "Swap:                 12 kB\n"
    "SwapPss:               3 kB\n"
    "Locked:                0 kB\n";

// The same from Linux 4.14: no Pss_* breakdown, no FilePmdMapped.
const char* const kOldRollup =
    "00400000-7fff3c1d6000 ---p 00000000 00:00 0                              [rollup]\n"
    "Rss:                 884 kB\n"
    "Pss:                 385 kB\n"
    "Shared_Clean:        696 kB\n"
    "Shared_Dirty:          0 kB\n"
    "Private_Clean:        52 kB\n"
    "Private_Dirty:       136 kB\n"
    "Referenced:          884 kB\n"
    "Anonymous:           136 kB\n"
    "LazyFree:              0 kB\n"
    "AnonHugePages:         0 kB\n"
    "ShmemPmdMapped:        0 kB\n"
    "Shared_Hugetlb:        0 kB\n"
    "Private_Hugetlb:       0 kB\n"
    "Swap:                  0 kB\n"
    "SwapPss:               0 kB\n"
    "Locked:                0 kB\n";

// Part of a /proc/PID/smaps: two mappings of the blob (fe:00 inode 4242,
// one path with a space, one deleted since), a library, an anonymous
// mapping, and another file with the same inode on another device.
const char* const kSmaps =
    "5619b2acd000-5619b2ad0000 r--p 00000000 fe:00 248030                     /usr/bin/zcwrap\n"
    "Size:                 12 kB\n"
    "KernelPageSize:        4 kB\n"
    "MMUPageSize:           4 kB\n"
    "Rss:                  12 kB\n"
    "Pss:                  12 kB\n"
    "Shared_Clean:          0 kB\n"
    "Private_Clean:        12 kB\n"
    "Private_Dirty:         0 kB\n"
    "THPeligible:           0\n"
    "VmFlags: rd mr mw me \n"
    "7f0000000000-7f0040000000 r--s 00000000 fe:00 4242                       /data/my models/a.zcb\n"
    "Size:            1048576 kB\n"
    "KernelPageSize:        4 kB\n"
    "MMUPageSize:           4 kB\n"
    "Rss:             1048576 kB\n"
    "Pss:              131072 kB\n"
    "Shared_Clean:    1048576 kB\n"
    "Shared_Dirty:          0 kB\n"
    "Private_Clean:         0 kB\n"
    "Private_Dirty:         0 kB\n"
    "FilePmdMapped:    524288 kB\n"
    "THPeligible:           1\n"
    "VmFlags: rd sh mr mw me ms \n"
    "7f0040000000-7f0040001000 r--s 00000000 fe:00 4242                       /data/old.zcb (deleted)\n"
    "Rss:                   4 kB\n"
    "Pss:                   4 kB\n"
    "Private_Clean:         4 kB\n"
    "7f0050000000-7f0050100000 rw-p 00000000 00:00 0 \n"
    "Rss:                1024 kB\n"
    "Pss:                1024 kB\n"
    "Private_Dirty:      1024 kB\n"
    "7f0060000000-7f0060001000 r--p 00000000 08:01 4242                       /mnt/other\n"
    "Rss:                   4 kB\n"
    "Pss:                   2 kB\n";

constexpr uint64_t kKiB = 1024;

}  // namespace

TEST_CASE("smaps_rollup: every field in bytes, the ones bench uses") {
  const MemoryUsage m = parse_smaps(kRollup, "rollup");
  CHECK(m.rss == 133208 * kKiB);
  CHECK(m.pss == 24093 * kKiB);  // not Pss_Dirty, Pss_Anon...
  CHECK(m.shared_clean == 114320 * kKiB);
  CHECK(m.shared_dirty == 0);
  CHECK(m.private_clean == 10192 * kKiB);
  CHECK(m.private_dirty == 8696 * kKiB);
  CHECK(m.private_bytes() == (10192 + 8696) * kKiB);
  CHECK(m.swap == 12 * kKiB);  // not SwapPss
  CHECK(m.file_pmd_mapped == 2048 * kKiB);
}

TEST_CASE("smaps_rollup of an older kernel: missing fields are zero") {
  const MemoryUsage m = parse_smaps(kOldRollup, "old");
  CHECK(m.rss == 884 * kKiB);
  CHECK(m.pss == 385 * kKiB);
  CHECK(m.file_pmd_mapped == 0);
  CHECK(m.shared_bytes() == 696 * kKiB);
}

TEST_CASE("smaps: only the mappings of one file, by device and inode") {
  const FileId blob{0xfe, 0x00, 4242};
  const MemoryUsage m = parse_smaps(kSmaps, "smaps", &blob);
  CHECK(m.rss == (1048576 + 4) * kKiB);
  CHECK(m.pss == (131072 + 4) * kKiB);
  CHECK(m.shared_clean == 1048576 * kKiB);
  CHECK(m.private_clean == 4 * kKiB);
  CHECK(m.private_dirty == 0);  // the anonymous mapping's is not counted
  CHECK(m.file_pmd_mapped == 524288 * kKiB);

  const FileId absent{0xfe, 0x00, 1};
  const MemoryUsage none = parse_smaps(kSmaps, "smaps", &absent);
  CHECK(none.rss == 0);
  CHECK(none.pss == 0);

  const MemoryUsage all = parse_smaps(kSmaps, "smaps");  // the whole process
  CHECK(all.rss == (12 + 1048576 + 4 + 1024 + 4) * kKiB);
  CHECK(all.private_dirty == 1024 * kKiB);
}

TEST_CASE("smaps: malformed text is an error that names the source and line") {
  struct Case {
    const char* name;
    const char* text;
    const char* mention;
  };
  const Case cases[] = {
      {"UNIT_MB", "x-y ---p 0 00:00 0 [rollup]\nRss: 12 MB\nPss: 1 kB\n", "line 2"},
      {"NO_UNIT", "x-y ---p 0 00:00 0 [rollup]\nRss: 12 kB\nPss: 1\n", "line 3"},
      {"NOT_A_NUMBER", "Rss: lots kB\nPss: 1 kB\n", "line 1"},
      {"TRAILING", "Rss: 12 kB extra\nPss: 1 kB\n", "line 1"},
      {"NO_PSS", "x-y ---p 0 00:00 0 [rollup]\nRss: 1 kB\nPss_Anon: 1 kB\n", "no Pss"},
      {"EMPTY", "", "no Rss"},
      {"NOT_SMAPS", "Name:\tbash\nState:\tS (sleeping)\n", "no Rss"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    try {
      parse_smaps(c.text, "/proc/1/smaps_rollup");
      FAIL("accepted");
    } catch (const zcwrap::Error& e) {
      CHECK(e.code() == zcwrap::ErrorCode::kInternal);
      const std::string what = e.what();
      CHECK_MESSAGE(what.find("/proc/1/smaps_rollup") == 0, what);
      CHECK_MESSAGE(what.find(c.mention) != std::string::npos, what);
    }
  }
}

TEST_CASE("this process: smaps_rollup reads, and a mapped file is found by its FileId") {
  const MemoryUsage self = zcwrap::cli::read_smaps_rollup(::getpid());
  CHECK(self.rss > 0);
  CHECK(self.pss > 0);
  CHECK(self.pss <= self.rss);
  // The test binary maps itself.
  const FileId exe = zcwrap::cli::file_id("/proc/self/exe");
  const MemoryUsage mapped = zcwrap::cli::read_file_mapping(::getpid(), exe);
  CHECK(mapped.rss > 0);
  CHECK_THROWS_AS(zcwrap::cli::read_smaps_rollup(0x7ffffff0), zcwrap::Error);
}

TEST_CASE("page cache: residency is measured, and evicting a written file empties it") {
  test::TempDir dir;
  const std::string file = dir / "data";
  std::string bytes(1 << 20, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 131 + 7);
  test::write_bytes(file, bytes);
  const auto before = zcwrap::cli::page_cache_residency(file);
  CHECK(before.size == bytes.size());
  CHECK(before.resident <= before.size);
  const auto after = zcwrap::cli::evict_from_page_cache(file);
  CHECK(after.size == bytes.size());
  // A tmpfs $TMPDIR has no backing file to reread, so it keeps its pages.
  struct statfs fs {};
  REQUIRE(::statfs(dir.path().c_str(), &fs) == 0);
  if (fs.f_type != TMPFS_MAGIC) CHECK(after.resident == 0);
  CHECK_THROWS_AS(zcwrap::cli::page_cache_residency(dir / "missing"), zcwrap::Error);
}

namespace {

test::ProcessResult run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), test::zcwrap_bin());
  return test::run_process(args);
}

std::string pack_resnet(const test::TempDir& dir) {
  const std::string blob = dir / "resnet.zcb";
  const auto packed = run_cli({"pack", test::fixture("resnet18_scripted.pt"), "-o", blob, "--quiet"});
  REQUIRE_MESSAGE(packed.status == 0, packed.err);
  return blob;
}

// Alive, and not a zombie waiting for a reaper (a container's init may
// never reap).
bool process_exists(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(stat, text)) return false;
  const size_t paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] != 'Z';
}

// The pids of `pid`'s children, from /proc (Linux 3.5 or later).
std::vector<pid_t> children_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> out;
  for (pid_t child; in >> child;) out.push_back(child);
  return out;
}

}  // namespace

TEST_CASE("bench: 3 workers share one copy of the blob; torch::jit::load workers each hold their own") {
  test::TempDir dir;
  const std::string blob = pack_resnet(dir);
  const auto r = run_cli({"bench", dir / "resnet.actor.json", "--workers", "3", "--json", "--input",
                          test::fixture("resnet18_scripted_in.pt"), "--baseline", test::fixture("resnet18_scripted.pt")});
  REQUIRE_MESSAGE(r.status == 0, r.err);
  const json out = json::parse(r.out);
  const uint64_t weights = out["weight_bytes"];
  CHECK(weights == zcwrap::describe(blob).storage_bytes);
  CHECK(weights > 40u << 20);  // resnet18: 11.7 M parameters
  const json& zc = out["zcwrap"];
  REQUIRE(zc["workers"].size() == 3);

  uint64_t blob_pss = 0, pss = 0, max_blob_rss = 0;
  std::set<pid_t> pids;
  for (const json& w : zc["workers"]) {
    pids.insert(w["pid"].get<pid_t>());
    const uint64_t rss = w["blob_mapping"]["rss"];
    MESSAGE("zcwrap worker " << w["pid"] << ": RSS " << w["memory"]["rss"] << ", PSS " << w["memory"]["pss"]
                             << ", blob mapping RSS " << rss << " PSS " << w["blob_mapping"]["pss"]);
    // Every weight page is resident in every worker, through the mapping...
    CHECK(rss >= weights);
    // ...and every weight tensor points into it.
    CHECK(w["weight_bytes_in_mapping"] == w["weight_bytes"]);
    CHECK(w["blob_mapping"]["private"] == 0);
    max_blob_rss = std::max(max_blob_rss, rss);
    blob_pss += w["blob_mapping"]["pss"].get<uint64_t>();
    pss += w["memory"]["pss"].get<uint64_t>();
    CHECK(w["output_digest"].is_string());
  }
  CHECK(pids.size() == 3);
  // PSS splits a page among the processes that map it: the three workers
  // account for one copy of the blob between them, not three.
  CHECK(blob_pss <= max_blob_rss + max_blob_rss / 10);
  CHECK(blob_pss >= max_blob_rss * 9 / 10);
  CHECK(zc["blob_pss_sum"] == blob_pss);
  CHECK(zc["pss_sum"] == pss);
  CHECK(zc["shares_one_copy"] == true);
  CHECK(zc["other_pss_per_worker"].get<uint64_t>() == (pss - blob_pss) / 3);

  // torch::jit::load workers each copy the weights into private memory.
  const json& base = out["baseline"];
  REQUIRE(base["workers"].size() == 3);
  for (const json& w : base["workers"]) {
    pids.insert(w["pid"].get<pid_t>());
    CHECK(w["memory"]["private"].get<uint64_t>() >= weights);
    CHECK(w["weight_bytes_in_mapping"] == 0);
  }
  CHECK(pids.size() == 6);
  // The same property as a ratio: zcwrap's three share what the baseline's
  // three hold three times. Besides the weights, a worker's memory differs by
  // a few MB between the two kinds (about 4 MB more for zcwrap's on torch
  // 2.14: its skeleton and manifest); 8 MiB each is allowed for that.
  constexpr uint64_t kOtherSlack = 8ull << 20;
  CHECK(base["pss_sum"].get<uint64_t>() + 3 * kOtherSlack >= pss + 2 * weights * 9 / 10);
  CHECK(out["ratios"]["pss_sum"].get<double>() < 1.0);
  CHECK(out["outputs_equal"] == true);
  for (const char* key : {"min", "median", "max"}) CHECK(zc["load_ms"][key].get<double>() > 0);

  // No worker outlives bench.
  for (pid_t pid : pids) CHECK_MESSAGE(!process_exists(pid), "worker " << pid << " is still alive");
}

TEST_CASE("bench: the human table, prefetch modes, and a pipeline") {
  test::TempDir dir;
  pack_resnet(dir);
  const auto table = run_cli({"bench", dir / "resnet.zcb", "--workers", "2", "--prefetch", "populate"});
  REQUIRE_MESSAGE(table.status == 0, table.err);
  CHECK(table.out.find("prefetch populate") != std::string::npos);
  CHECK(table.out.find("blob PSS") != std::string::npos);
  CHECK(table.out.find("one shared copy") != std::string::npos);
  CHECK(table.err.empty());

  // A lock this small a limit cannot hold is a warning, not a failure; root
  // is not limited. Either way bench goes on.
  const auto locked = run_cli({"bench", dir / "resnet.zcb", "--workers", "1", "--prefetch", "lock", "--json"});
  REQUIRE_MESSAGE(locked.status == 0, locked.err);
  const json out = json::parse(locked.out);
  CHECK(out["prefetch"] == "lock");
  for (const json& line : out["warnings"]) CHECK(line.get<std::string>().find("cannot lock") != std::string::npos);

  const auto pipe = run_cli({"pack", "--model", "a=" + test::fixture("pipeline_a.pt"), "--model",
                             "b=" + test::fixture("pipeline_b.pt"), "-o", dir / "p.zcb", "--quiet"});
  REQUIRE_MESSAGE(pipe.status == 0, pipe.err);
  const auto chained = run_cli({"bench", dir / "p.actor.json", "--workers", "2", "--json", "--input",
                                test::fixture("pipeline_a_in.pt"), "--baseline", "a=" + test::fixture("pipeline_a.pt"),
                                "--baseline", "b=" + test::fixture("pipeline_b.pt"), "--calls", "3"});
  REQUIRE_MESSAGE(chained.status == 0, chained.err);
  const json p = json::parse(chained.out);
  CHECK(p["models"] == json({"a", "b"}));
  CHECK(p["outputs_equal"] == true);
  CHECK(p["zcwrap"]["call_ms"]["median"].get<double>() > 0);
}

TEST_CASE("bench: failures are one error line with the worker's exit status, and leave no worker behind") {
  test::TempDir dir;
  pack_resnet(dir);
  struct Case {
    const char* name;
    std::vector<std::string> args;
    int status;
    const char* mention;
  };
  const Case cases[] = {
      {"BAD_PREFETCH", {"--prefetch", "always"}, 2, "--prefetch"},
      {"ZERO_WORKERS", {"--workers", "0"}, 2, "--workers"},
      {"MISSING_INPUT", {"--input", dir / "nope.pt"}, 3, "nope.pt"},
      // Checked once by bench before any worker starts (as run reads it).
      {"INPUT_NOT_TENSORS", {"--input", test::fixture("garbage.pt")}, 3, "not a tensor file"},
      {"WRONG_INPUT", {"--input", test::fixture("pipeline_a_in.pt")}, 5, "failed on this input"},
      {"BASELINE_MISSING", {"--baseline", dir / "nope.pt"}, 3, "nope.pt"},
      {"BASELINE_NOT_MODEL", {"--baseline", test::fixture("state_dict.pt")}, 5, "torch::jit::load failed"},
      {"CALLS_WITHOUT_INPUT", {"--calls", "2"}, 2, "--calls needs --input"},
      {"NO_SUCH_MODEL", {"--model", "other"}, 2, "no model 'other'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.name);
    std::vector<std::string> args = {"bench", dir / "resnet.zcb", "--workers", "2"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const auto r = run_cli(args);
    CHECK(r.status == c.status);
    CHECK_MESSAGE(r.err.rfind("zcwrap: error: ", 0) == 0, r.err);
    CHECK_MESSAGE(r.err.find(c.mention) != std::string::npos, r.err);
    CHECK_MESSAGE(std::count(r.err.begin(), r.err.end(), '\n') == 1, r.err);
  }
  const auto missing = run_cli({"bench", dir / "none.zcb"});
  CHECK(missing.status == 3);
}

TEST_CASE("run --prefetch: every mode gives the same output; warnings go to stderr as zcwrap: warning") {
  test::TempDir dir;
  pack_resnet(dir);
  std::string reference;
  for (const char* mode : {"none", "willneed", "populate", "lock"}) {
    CAPTURE(mode);
    const std::string out = dir / (std::string(mode) + ".pt");
    const auto r = run_cli({"run", dir / "resnet.zcb", "--prefetch", mode, "-i",
                            test::fixture("resnet18_scripted_in.pt"), "-o", out});
    REQUIRE_MESSAGE(r.status == 0, r.err);
    if (!r.err.empty()) CHECK_MESSAGE(r.err.rfind("zcwrap: warning: ", 0) == 0, r.err);
    const std::string bytes = test::read_bytes(out);
    if (reference.empty()) reference = bytes;
    CHECK(bytes == reference);
  }
}

TEST_CASE("bench: workers die with a driver that is killed") {
  test::TempDir dir;
  pack_resnet(dir);
  // A worker that would call the model for hours, under a driver that
  // gets SIGKILL: no destructor runs, only PR_SET_PDEATHSIG can end it.
  const std::string bin = test::zcwrap_bin();
  const std::string blob = dir / "resnet.zcb";
  const std::string input = test::fixture("resnet18_scripted_in.pt");
  std::vector<const char*> argv = {bin.c_str(), "bench", blob.c_str(), "--workers", "1", "--input", input.c_str(),
                                   "--calls", "1000000", nullptr};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  pid_t driver = -1;
  REQUIRE(::posix_spawn(&driver, bin.c_str(), &actions, nullptr, const_cast<char**>(argv.data()), environ) == 0);
  posix_spawn_file_actions_destroy(&actions);

  std::vector<pid_t> workers;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (workers.empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    workers = children_of(driver);
  }
  ::kill(driver, SIGKILL);
  int status = 0;
  ::waitpid(driver, &status, 0);
  REQUIRE_MESSAGE(workers.size() == 1, "bench started no worker within 60 s");
  bool gone = false;
  for (int i = 0; i < 500 && !gone; ++i) {
    gone = !process_exists(workers.front());
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK_MESSAGE(gone, "worker " << workers.front() << " outlived its driver");
  if (!gone) ::kill(workers.front(), SIGKILL);
}
