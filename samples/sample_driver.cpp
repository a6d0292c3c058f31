// zcwrap-sample: the actor pattern end to end. The driver opens an actor
// config, starts N worker processes that each rebuild the model zero-copy
// from the blob and serve batches, reads their memory from /proc while they
// are all alive, and optionally does the same with torch::jit::load of the
// original files, printing both side by side.
//
// This file does not include LibTorch (sample_worker.cpp does), so it
// compiles in a moment; the binary links it all the same, and workers are
// this binary started again as `worker`.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "sample.hpp"
#include "zcwrap/zcwrap.hpp"

namespace sample {
namespace {

using Clock = std::chrono::steady_clock;
using zcwrap::Error;
using zcwrap::ErrorCode;

constexpr const char* kUsage =
    "zcwrap-sample: serve one model from N worker processes that share one copy of its weights\n"
    "\n"
    "Usage: zcwrap-sample drive --config X.actor.json --input IN.pt [options]\n"
    "\n"
    "  --config PATH      Actor config written by `zcwrap pack` (or the blob itself)\n"
    "  --input IN.pt      torch.save of a tensor, or of a tuple (positional arguments)\n"
    "  --workers N        Worker processes                                  [default: 4]\n"
    "  --batches K        Batches each worker serves                        [default: 20]\n"
    "  --model NAME       Serve only this model of a pipeline  [default: all, in order,\n"
    "                     each fed the previous one's output]\n"
    "  --baseline PATH    Also run N workers that torch::jit::load the original file and\n"
    "                     compare; for a pipeline give NAME=PATH once per model served\n"
    "  --threads T        LibTorch intra-op threads per worker              [default: 1]\n"
    "  --timeout S        Seconds to wait for a worker's report             [default: 300]\n"
    "  -h, --help         Show this help\n";

// A file descriptor that closes itself; move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string errno_text() { return std::strerror(errno); }

// "exited with status 3", "was killed by signal 11 (Segmentation fault)".
std::string wait_status_text(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + strsignal(WTERMSIG(status)) + ")";
  }
  return "stopped with wait status " + std::to_string(status);
}

// A started worker process and the driver's end of its socket. Destroying
// it kills and reaps the process unless reap() already did, so no way out of
// the driver, an exception included, leaves a worker behind.
class Worker {
 public:
  Worker(std::string name, pid_t pid, UniqueFd socket)
      : name_(std::move(name)), pid_(pid), socket_(std::move(socket)) {}
  Worker(Worker&& other) noexcept
      : name_(std::move(other.name_)), pid_(std::exchange(other.pid_, -1)), socket_(std::move(other.socket_)) {}
  Worker& operator=(Worker&& other) noexcept {
    if (this != &other) {
      kill_and_reap();
      name_ = std::move(other.name_);
      pid_ = std::exchange(other.pid_, -1);
      socket_ = std::move(other.socket_);
    }
    return *this;
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() { kill_and_reap(); }

  /// "zcwrap worker 2 (pid 4711)", for messages.
  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }

  /// Reads the worker's one-line report. Throws Error naming the worker when
  /// it dies first or sends nothing before `deadline`.
  nlohmann::json read_report(Clock::time_point deadline) {
    std::string line;
    char buf[4096];
    while (line.find('\n') == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd pfd{socket_.get(), POLLIN, 0};
      const int ready = poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
      if (ready < 0 && errno == EINTR) continue;
      if (ready < 0) throw Error(ErrorCode::kInternal, name_ + ": poll: " + errno_text());
      if (ready == 0) {
        throw Error(ErrorCode::kInternal, name_ + " sent no report in time (see --timeout); killed it");
      }
      const ssize_t n = read(socket_.get(), buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw Error(ErrorCode::kInternal, name_ + ": read: " + errno_text());
      if (n == 0) {
        const int status = reap(std::chrono::seconds(5));
        throw Error(ErrorCode::kInternal, name_ + " " + wait_status_text(status) + " before reporting");
      }
      line.append(buf, static_cast<size_t>(n));
    }
    try {
      return nlohmann::json::parse(line.substr(0, line.find('\n')));
    } catch (const nlohmann::json::exception& e) {
      throw Error(ErrorCode::kInternal, name_ + " sent a malformed report: " + e.what());
    }
  }

  /// Closes the driver's end: the worker, blocked reading its end, sees EOF
  /// and exits.
  void release() { socket_.reset(); }

  /// Waits up to `timeout` for the worker to exit, then kills it. Returns
  /// the wait status.
  int reap(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    int status = 0;
    for (;;) {
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) break;
      if (done < 0 && errno != EINTR) throw Error(ErrorCode::kInternal, name_ + ": waitpid: " + errno_text());
      if (Clock::now() >= deadline) {
        kill(pid_, SIGKILL);
        while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    return status;
  }

 private:
  void kill_and_reap() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

  std::string name_;
  pid_t pid_ = -1;
  UniqueFd socket_;
};

// Starts `/proc/self/exe worker ARGS...` with its end of a socketpair on
// kReportFd. fork then exec, never fork alone: LibTorch is loaded here and
// its thread pools do not survive a fork.
Worker start_worker(const std::string& name, const std::vector<std::string>& args) {
  std::vector<std::string> strings = {"zcwrap-sample", "worker"};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  int fds[2];
  // CLOEXEC on both ends: a worker must not inherit the sockets of the
  // workers started before it, or their EOF would never come.
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw Error(ErrorCode::kInternal, "socketpair: " + errno_text());
  }
  UniqueFd driver_end(fds[0]);
  UniqueFd worker_end(fds[1]);
  const pid_t driver = getpid();
  const pid_t pid = fork();
  if (pid < 0) throw Error(ErrorCode::kInternal, "fork: " + errno_text());
  if (pid == 0) {
    // Between fork and exec only async-signal-safe calls. PDEATHSIG ends the
    // worker if the driver dies without cleaning up (SIGKILL, a crash); it
    // fires when the forking thread exits, which here is the main thread.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != driver) _exit(127);
    const int fd = worker_end.get();
    // dup2 onto itself keeps CLOEXEC, so clear the flag by hand in that case.
    if (fd == kReportFd ? fcntl(fd, F_SETFD, 0) != 0 : dup2(fd, kReportFd) < 0) _exit(127);
    execv("/proc/self/exe", argv.data());
    static const char kMessage[] = "zcwrap-sample: error: cannot exec /proc/self/exe for a worker\n";
    const ssize_t ignored = write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    (void)ignored;
    _exit(127);
  }
  return Worker(name + " (pid " + std::to_string(pid) + ")", pid, std::move(driver_end));
}

// Memory fields of /proc/PID/smaps(_rollup), in bytes. Shared is RSS less private.
struct Memory {
  uint64_t rss = 0;
  uint64_t pss = 0;
  uint64_t private_clean = 0;
  uint64_t private_dirty = 0;

  uint64_t private_bytes() const { return private_clean + private_dirty; }
};

struct FileId {
  unsigned major_number = 0;
  unsigned minor_number = 0;
  uint64_t inode = 0;
};

FileId file_id(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) throw Error(ErrorCode::kInput, path + ": stat: " + errno_text());
  return {major(st.st_dev), minor(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

// Sums the fields of every entry of an smaps-format file; with `only`, of
// the entries that map that file. Entries are matched by device and inode,
// as the path the kernel prints may differ from ours (symlinks, bind mounts).
Memory read_smaps(const std::string& path, const FileId* only) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorCode::kInternal, path + ": cannot read: " + errno_text());
  Memory memory;
  bool counting = only == nullptr;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    fields >> key;
    if (key.empty()) continue;
    if (key.back() != ':') {  // "start-end perms offset major:minor inode [path]"
      if (only == nullptr) continue;
      std::string perms, offset, device;
      uint64_t inode = 0;
      fields >> perms >> offset >> device >> inode;
      unsigned major_number = 0, minor_number = 0;
      counting = std::sscanf(device.c_str(), "%x:%x", &major_number, &minor_number) == 2 &&
                 major_number == only->major_number && minor_number == only->minor_number && inode == only->inode;
      continue;
    }
    uint64_t kib = 0;
    if (!counting || !(fields >> kib)) continue;
    const uint64_t bytes = kib * 1024;
    if (key == "Rss:") memory.rss += bytes;
    else if (key == "Pss:") memory.pss += bytes;
    else if (key == "Private_Clean:") memory.private_clean += bytes;
    else if (key == "Private_Dirty:") memory.private_dirty += bytes;
  }
  return memory;
}

struct WorkerResult {
  double load_ms = 0;
  double batch_ms = 0;  // median over the worker's batches
  std::string checksum;
  std::string output;
  bool stable = true;
  uint64_t weight_bytes = 0;
  uint64_t weight_bytes_in_mapping = 0;
  Memory memory;       // the whole process (smaps_rollup)
  Memory blob_memory;  // the blob's mapping only; zero for the baseline
};

struct Run {
  std::string label;
  std::vector<WorkerResult> workers;
};

struct DriveOptions {
  std::string config;
  std::string input;
  int workers = 4;
  int batches = 20;
  std::string model;
  std::vector<std::string> baseline;
  int threads = 1;
  int timeout_s = 300;
};

// Starts every worker of one run, collects their reports, reads their
// memory while they are all alive (that is when pages are shared), then lets
// them go. `blob`: the file whose mapping is measured on its own.
Run run_workers(const std::string& label, const DriveOptions& options, const std::vector<std::string>& args,
                const FileId* blob) {
  std::printf("  starting %d %s workers ...\n", options.workers, label.c_str());
  std::fflush(stdout);  // show it before the wait
  std::vector<Worker> workers;
  for (int i = 0; i < options.workers; ++i) {
    std::vector<std::string> worker_args = {"--index", std::to_string(i)};
    worker_args.insert(worker_args.end(), args.begin(), args.end());
    workers.push_back(start_worker(label + " worker " + std::to_string(i), worker_args));
  }

  Run run{label, {}};
  const auto deadline = Clock::now() + std::chrono::seconds(options.timeout_s);
  for (Worker& worker : workers) {
    const nlohmann::json report = worker.read_report(deadline);
    if (!report.value("ok", false)) {
      const int code = report.value("code", static_cast<int>(ErrorCode::kInternal));
      throw Error(static_cast<ErrorCode>(code), worker.name() + " failed: " + report.value("error", "(no message)"));
    }
    WorkerResult result;
    result.load_ms = report.at("load_ms").get<double>();
    result.batch_ms = report.at("batch_ms").get<double>();
    result.checksum = report.at("checksum").get<std::string>();
    result.output = report.at("output").get<std::string>();
    result.stable = report.at("stable").get<bool>();
    result.weight_bytes = report.at("weight_bytes").get<uint64_t>();
    result.weight_bytes_in_mapping = report.at("weight_bytes_in_mapping").get<uint64_t>();
    run.workers.push_back(result);
  }
  for (size_t i = 0; i < workers.size(); ++i) {
    const std::string proc = "/proc/" + std::to_string(workers[i].pid());
    run.workers[i].memory = read_smaps(proc + "/smaps_rollup", nullptr);
    if (blob != nullptr) run.workers[i].blob_memory = read_smaps(proc + "/smaps", blob);
  }
  for (Worker& worker : workers) worker.release();
  for (Worker& worker : workers) {
    const std::string name = worker.name();
    const int status = worker.reap(std::chrono::seconds(10));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      throw Error(ErrorCode::kInternal, name + " " + wait_status_text(status) + " after reporting");
    }
  }
  return run;
}

// "22.6 MiB", "812 B".
std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buf[32];
  if (unit == 0) {
    std::snprintf(buf, sizeof(buf), "%" PRIu64 " B", bytes);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", value, units[unit]);
  }
  return buf;
}

// "3.1 ms", "210 ms": three significant figures are plenty for a timing.
std::string ms_text(double ms) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), ms < 10 ? "%.2f" : ms < 100 ? "%.1f" : "%.0f", ms);
  return buf;
}

// "0.84", "1.1", "68".
std::string ratio_text(double ratio) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), ratio < 1 ? "%.2f" : ratio < 10 ? "%.1f" : "%.0f", ratio);
  return buf;
}

template <typename Field>
double median_of(const Run& run, Field field) {
  std::vector<double> values;
  for (const WorkerResult& w : run.workers) values.push_back(static_cast<double>(field(w)));
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

template <typename Field>
uint64_t sum_of(const Run& run, Field field) {
  uint64_t total = 0;
  for (const WorkerResult& w : run.workers) total += field(w);
  return total;
}

// One group of columns: the same figures for either run.
std::string cells(const std::string& load, const std::string& batch, const std::string& rss,
                  const std::string& pss, const std::string& priv) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%9s %9s %10s %10s %10s", load.c_str(), batch.c_str(), rss.c_str(), pss.c_str(),
                priv.c_str());
  return buf;
}

std::string worker_cells(const WorkerResult& w) {
  return cells(ms_text(w.load_ms), ms_text(w.batch_ms), human_bytes(w.memory.rss), human_bytes(w.memory.pss),
               human_bytes(w.memory.private_bytes()));
}

void print_table(const Run& zc, const Run* base) {
  const std::string sep = base ? "  |" : "";
  auto row = [&](const std::string& first, const std::string& left, const std::string& right) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%-7s%s%s%s", first.c_str(), left.c_str(), sep.c_str(),
                  base ? right.c_str() : "");
    std::string line = buf;
    line.erase(line.find_last_not_of(' ') + 1);
    std::printf("%s\n", line.c_str());
  };
  char group[160];
  if (base) {
    std::snprintf(group, sizeof(group), "%-7s %-50s%s %s\n", "", zc.label.c_str(), sep.c_str(),
                  base->label.c_str());
    std::printf("%s", group);
  }
  const std::string head = cells("load ms", "batch ms", "RSS", "PSS", "private");
  row("worker", head, head);
  for (size_t i = 0; i < zc.workers.size(); ++i) {
    row(std::to_string(i), worker_cells(zc.workers[i]), base ? worker_cells(base->workers[i]) : "");
  }
  auto median_cells = [](const Run& run) {
    return cells(ms_text(median_of(run, [](const WorkerResult& w) { return w.load_ms; })),
                 ms_text(median_of(run, [](const WorkerResult& w) { return w.batch_ms; })), "", "", "");
  };
  auto sum_cells = [](const Run& run) {
    return cells("", "", "", human_bytes(sum_of(run, [](const WorkerResult& w) { return w.memory.pss; })),
                 human_bytes(sum_of(run, [](const WorkerResult& w) { return w.memory.private_bytes(); })));
  };
  row("median", median_cells(zc), base ? median_cells(*base) : "");
  row("sum", sum_cells(zc), base ? sum_cells(*base) : "");
}

// "1 worker", "4 workers".
std::string workers_text(size_t n) { return std::to_string(n) + (n == 1 ? " worker" : " workers"); }

// Every worker of every run gave the same output, each the same for all its
// batches. Prints the verdict on outputs; false when they differ.
bool check_outputs(const Run& zc, const Run* base) {
  const WorkerResult& reference = zc.workers.front();
  for (const Run* run : {&zc, base}) {
    if (run == nullptr) continue;
    for (size_t i = 0; i < run->workers.size(); ++i) {
      const WorkerResult& w = run->workers[i];
      if (!w.stable) {
        std::fprintf(stderr, "zcwrap-sample: error: %s worker %zu gave different outputs for the same batch\n",
                     run->label.c_str(), i);
        return false;
      }
      if (w.checksum != reference.checksum || w.output != reference.output) {
        std::fprintf(stderr,
                     "zcwrap-sample: error: outputs differ: %s worker %zu gives %s (FNV-1a %s), "
                     "%s worker 0 gives %s (FNV-1a %s)\n",
                     run->label.c_str(), i, w.output.c_str(), w.checksum.c_str(), zc.label.c_str(),
                     reference.output.c_str(), reference.checksum.c_str());
        return false;
      }
    }
  }
  if (base) {
    std::printf("outputs: bit-equal in all %zu workers, %s and %s: %s, FNV-1a %s\n",
                zc.workers.size() + base->workers.size(), zc.label.c_str(), base->label.c_str(),
                reference.output.c_str(), reference.checksum.c_str());
  } else {
    const size_t n = zc.workers.size();
    std::printf("outputs: bit-equal in %s: %s, FNV-1a %s\n",
                n == 1 ? "the one worker's batches" : n == 2 ? "both workers" : ("all " + workers_text(n)).c_str(),
                reference.output.c_str(), reference.checksum.c_str());
  }
  return true;
}

// The blob's pages count once in total when every worker maps the same page
// cache pages: the summed PSS of the mapping is then about one worker's RSS
// of it. 10% slack for pages one worker touched and another did not.
bool shares_one_copy(const Run& zc) {
  const uint64_t blob_pss = sum_of(zc, [](const WorkerResult& w) { return w.blob_memory.pss; });
  uint64_t blob_rss = 0;
  for (const WorkerResult& w : zc.workers) blob_rss = std::max(blob_rss, w.blob_memory.rss);
  return blob_rss > 0 && blob_pss <= blob_rss + blob_rss / 10;
}

void print_verdict(const Run& zc, const Run* base) {
  const WorkerResult& first = zc.workers.front();
  const bool shared = shares_one_copy(zc);
  const uint64_t blob_pss = sum_of(zc, [](const WorkerResult& w) { return w.blob_memory.pss; });
  std::printf("weights: %s map %s of the blob each, %s summed PSS%s", workers_text(zc.workers.size()).c_str(),
              human_bytes(first.blob_memory.rss).c_str(), human_bytes(blob_pss).c_str(),
              shared ? " (one copy)" : "");
  const uint64_t outside = first.weight_bytes - first.weight_bytes_in_mapping;
  if (outside > 0) {
    std::printf(", and hold %s of tensors outside it (copied, not shared)", human_bytes(outside).c_str());
  }
  if (base) {
    std::printf("; %s workers hold %s of tensors each, in private memory", base->label.c_str(),
                human_bytes(base->workers.front().weight_bytes).c_str());
  }
  std::printf("\n");

  const uint64_t zc_pss = sum_of(zc, [](const WorkerResult& w) { return w.memory.pss; });
  const double zc_load = median_of(zc, [](const WorkerResult& w) { return w.load_ms; });
  std::string verdict = workers_text(zc.workers.size());
  if (zc.workers.size() > 1) verdict += shared ? " share one copy" : " do NOT share one copy of the blob";
  verdict += ": summed PSS " + human_bytes(zc_pss);
  if (base) {
    const uint64_t base_pss = sum_of(*base, [](const WorkerResult& w) { return w.memory.pss; });
    const double base_load = median_of(*base, [](const WorkerResult& w) { return w.load_ms; });
    const double speedup = base_load / zc_load;
    // Within 5% is run-to-run noise on a busy machine, not a speedup.
    const std::string pace = speedup >= 1.05   ? ratio_text(speedup) + "x faster"
                             : speedup > 0.95 ? "about the same"
                                              : ratio_text(1 / speedup) + "x slower";
    verdict += " vs " + human_bytes(base_pss) + " for " + base->label + " (" +
               ratio_text(static_cast<double>(zc_pss) / static_cast<double>(base_pss)) + "x); unwrap median " +
               ms_text(zc_load) + " ms vs " + ms_text(base_load) + " ms (" + pace + ")";
  } else {
    verdict += "; unwrap median " + ms_text(zc_load) + " ms";
  }
  std::printf("verdict: %s\n", verdict.c_str());
}

int parse_count(const std::string& option, const std::string& text, int low, int high) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < low || value > high) {
    throw Error(ErrorCode::kUsage,
                option + " " + text + ": expected a whole number from " + std::to_string(low) + " to " +
                    std::to_string(high));
  }
  return static_cast<int>(value);
}

DriveOptions parse_drive_options(int argc, char** argv) {
  DriveOptions options;
  for (int i = 0; i < argc; ++i) {
    const std::string option = argv[i];
    if (i + 1 >= argc) throw Error(ErrorCode::kUsage, option + " needs a value; see zcwrap-sample --help");
    const std::string value = argv[++i];
    if (option == "--config") options.config = value;
    else if (option == "--input") options.input = value;
    else if (option == "--workers") options.workers = parse_count(option, value, 1, 256);
    else if (option == "--batches") options.batches = parse_count(option, value, 1, 1000000);
    else if (option == "--model") options.model = value;
    else if (option == "--baseline") options.baseline.push_back(value);
    else if (option == "--threads") options.threads = parse_count(option, value, 1, 1024);
    else if (option == "--timeout") options.timeout_s = parse_count(option, value, 1, 86400);
    else throw Error(ErrorCode::kUsage, "unknown option " + option + "; see zcwrap-sample --help");
  }
  if (options.config.empty() || options.input.empty()) {
    throw Error(ErrorCode::kUsage, "drive needs --config and --input; see zcwrap-sample --help");
  }
  return options;
}

void require_readable(const std::string& path) {
  if (access(path.c_str(), R_OK) != 0) throw Error(ErrorCode::kInput, path + ": cannot read: " + errno_text());
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// The --load arguments of the baseline workers: one original file per model
// served, in pipeline order.
std::vector<std::string> baseline_args(const DriveOptions& options, const zcwrap::ModelWrapper& wrapper,
                                       const std::vector<std::string>& served) {
  std::vector<std::pair<std::string, std::string>> given;
  if (wrapper.is_standalone_module()) {
    if (options.baseline.size() != 1) {
      throw Error(ErrorCode::kUsage, "--baseline: give one PATH for a standalone model");
    }
    given.emplace_back(served.front(), options.baseline.front());
  } else {
    for (const std::string& spec : options.baseline) {
      const size_t eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
        throw Error(ErrorCode::kUsage, "--baseline " + spec + ": a pipeline needs NAME=PATH (models: " +
                                           join(wrapper.model_names()) + ")");
      }
      given.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
    }
  }
  std::vector<std::string> args;
  for (const std::string& name : served) {
    const auto it = std::find_if(given.begin(), given.end(), [&](const auto& g) { return g.first == name; });
    if (it == given.end()) throw Error(ErrorCode::kUsage, "--baseline: no original file for model '" + name + "'");
    require_readable(it->second);
    args.insert(args.end(), {"--load", name + "=" + it->second});
  }
  return args;
}

int drive(const DriveOptions& options) {
  const zcwrap::ModelWrapper wrapper = zcwrap::ModelWrapper::open(options.config);
  const nlohmann::json info = zcwrap::describe(options.config);
  const uint64_t weight_bytes = info["storages"]["bytes"].get<uint64_t>();
  require_readable(options.input);

  std::vector<std::string> served = wrapper.model_names();
  if (!options.model.empty()) {
    if (std::find(served.begin(), served.end(), options.model) == served.end()) {
      throw Error(ErrorCode::kUsage, options.config + ": no model '" + options.model + "' (models: " +
                                         join(served) + ")");
    }
    served = {options.model};
  }
  const std::vector<std::string> common = {"--input", options.input, "--batches", std::to_string(options.batches),
                                           "--threads", std::to_string(options.threads)};
  // The config from open() names the blob by its absolute path, so workers
  // may run in any folder.
  std::vector<std::string> zc_args = common;
  zc_args.insert(zc_args.end(), {"--actor", wrapper.to_actor().dump()});
  if (!options.model.empty()) zc_args.insert(zc_args.end(), {"--model", options.model});
  std::vector<std::string> base_args;
  if (!options.baseline.empty()) {
    base_args = common;
    const std::vector<std::string> loads = baseline_args(options, wrapper, served);
    base_args.insert(base_args.end(), loads.begin(), loads.end());
  }

  std::printf("%d worker processes each load %s, then run %d batches of %s (%d thread%s each)\n",
              options.workers, wrapper.is_standalone_module() ? "the model" : join(served).c_str(),
              options.batches, options.input.c_str(), options.threads, options.threads == 1 ? "" : "s");
  std::printf("  zcwrap:           from_actor(config).unwrap(\"cpu\") of %s (%s of weights in %zu storages)\n",
              wrapper.blob_path().c_str(), human_bytes(weight_bytes).c_str(),
              info["storages"]["count"].get<size_t>());
  if (!options.baseline.empty()) {
    std::vector<std::string> files;
    for (size_t i = 1; i < base_args.size(); ++i) {
      if (base_args[i - 1] == "--load") files.push_back(base_args[i].substr(base_args[i].find('=') + 1));
    }
    std::printf("  torch::jit::load: %s\n", join(files).c_str());
  }
  std::printf("  memory: /proc/PID/smaps_rollup of each worker, read while all are alive and hold every weight\n");

  const FileId blob = file_id(wrapper.blob_path());
  const Run zc = run_workers("zcwrap", options, zc_args, &blob);
  std::optional<Run> base;
  if (!options.baseline.empty()) base = run_workers("torch::jit::load", options, base_args, nullptr);

  std::printf("\n");
  print_table(zc, base ? &*base : nullptr);
  std::printf("\n");
  const bool outputs_equal = check_outputs(zc, base ? &*base : nullptr);
  print_verdict(zc, base ? &*base : nullptr);
  return outputs_equal ? 0 : 1;
}

}  // namespace
}  // namespace sample

int main(int argc, char** argv) {
  const std::string command = argc >= 2 ? argv[1] : "";
  if (command == "worker") return sample::run_worker(argc - 2, argv + 2);
  try {
    if (command == "drive") return sample::drive(sample::parse_drive_options(argc - 2, argv + 2));
    if (command == "-h" || command == "--help" || command == "help") {
      std::printf("%s", sample::kUsage);
      return 0;
    }
    std::fprintf(stderr, "%s", sample::kUsage);
    return zcwrap::exit_status(zcwrap::ErrorCode::kUsage);
  } catch (const zcwrap::Error& e) {
    std::fprintf(stderr, "zcwrap-sample: error: %s\n", e.what());
    return zcwrap::exit_status(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zcwrap-sample: error: %s\n", e.what());
    return 1;
  }
}
