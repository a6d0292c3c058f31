// zcwrap-sample: the actor pattern end to end, on the public API only. The
// driver opens an actor config written by `zcwrap pack` and starts N worker
// processes at once; each rebuilds the model from the config, zero-copy
// from the shared blob, serves batches, and reports its load time and
// output. To measure memory, or compare with torch::jit::load, use
// `zcwrap bench`.
//
// This file does not include LibTorch (sample_worker.cpp does), so it
// compiles in a moment; the binary links it all the same, and workers are
// this binary started again as `worker`.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "sample.hpp"
#include "zcwrap/zcwrap.hpp"

extern char** environ;

namespace sample {
namespace {

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
    "  --threads T        LibTorch intra-op threads per worker              [default: 1]\n"
    "  -h, --help         Show this help\n"
    "\n"
    "Memory figures and a comparison with torch::jit::load: zcwrap bench --help\n";

struct DriveOptions {
  std::string config;
  std::string input;
  int workers = 4;
  int batches = 20;
  std::string model;
  int threads = 1;
};

std::string errno_text() { return std::strerror(errno); }

// A started worker: its pid and the read end of its stdout. Destroying it
// kills and reaps the process unless finish() did, so an error in the
// driver leaves no worker behind.
class Worker {
 public:
  Worker(pid_t pid, int out) : pid_(pid), out_(out) {}
  Worker(Worker&& other) noexcept : pid_(std::exchange(other.pid_, -1)), out_(std::exchange(other.out_, -1)) {}
  Worker& operator=(Worker&&) = delete;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    if (out_ >= 0) close(out_);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
  }

  pid_t pid() const { return pid_; }

  /// Reads everything the worker prints, waits for it to exit, and returns
  /// its report. Throws Error naming the worker when it sent none.
  nlohmann::json finish(int index) {
    std::string text;
    char buf[4096];
    for (;;) {
      const ssize_t n = read(out_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      text.append(buf, static_cast<size_t>(n));
    }
    close(out_);
    out_ = -1;
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    const pid_t pid = std::exchange(pid_, -1);
    const std::string name = "worker " + std::to_string(index) + " (pid " + std::to_string(pid) + ")";
    try {
      return nlohmann::json::parse(text.substr(0, text.find('\n')));
    } catch (const nlohmann::json::exception&) {
      throw Error(ErrorCode::kInternal, name + " exited (wait status " + std::to_string(status) +
                                            ") without a report");
    }
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
};

// Starts `/proc/self/exe worker ARGS...` with its stdout on a pipe.
// posix_spawn, not fork: LibTorch is loaded here and its thread pools do
// not survive a fork.
Worker start_worker(const std::vector<std::string>& args) {
  std::vector<std::string> strings = {"zcwrap-sample", "worker"};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  int fds[2];
  // CLOEXEC: a worker must not inherit the pipes of the workers before it.
  if (pipe2(fds, O_CLOEXEC) != 0) throw Error(ErrorCode::kInternal, "pipe: " + errno_text());
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    throw Error(ErrorCode::kInternal, std::string("cannot start a worker: ") + std::strerror(rc));
  }
  return Worker(pid, fds[0]);
}

int parse_count(const std::string& option, const std::string& text, int high) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || value < 1 || value > high) {
    throw Error(ErrorCode::kUsage, option + " " + text + ": expected a whole number from 1 to " + std::to_string(high));
  }
  return static_cast<int>(value);
}

DriveOptions parse_drive_options(int argc, char** argv) {
  DriveOptions options;
  for (int i = 0; i < argc; i += 2) {
    const std::string option = argv[i];
    if (i + 1 >= argc) throw Error(ErrorCode::kUsage, option + " needs a value; see zcwrap-sample --help");
    const std::string value = argv[i + 1];
    if (option == "--config") options.config = value;
    else if (option == "--input") options.input = value;
    else if (option == "--workers") options.workers = parse_count(option, value, 256);
    else if (option == "--batches") options.batches = parse_count(option, value, 1000000);
    else if (option == "--model") options.model = value;
    else if (option == "--threads") options.threads = parse_count(option, value, 1024);
    else throw Error(ErrorCode::kUsage, "unknown option " + option + "; see zcwrap-sample --help");
  }
  if (options.config.empty() || options.input.empty()) {
    throw Error(ErrorCode::kUsage, "drive needs --config and --input; see zcwrap-sample --help");
  }
  return options;
}

int drive(const DriveOptions& options) {
  // The driver's side of the pattern: open the packed model once and hand
  // its actor config to every worker. The config names the blob by its
  // absolute path, so workers may run in any folder.
  const zcwrap::ActorWrapper actor(zcwrap::ModelWrapper::open(options.config), "cpu");
  const nlohmann::json config = actor.to_actor();
  const std::vector<std::string> names = actor.wrapper().model_names();
  if (!options.model.empty() && std::find(names.begin(), names.end(), options.model) == names.end()) {
    std::string list;
    for (const std::string& name : names) list += (list.empty() ? "" : ", ") + name;
    throw Error(ErrorCode::kUsage, options.config + ": no model '" + options.model + "' (models: " + list + ")");
  }
  const zcwrap::BlobInfo info = zcwrap::describe(options.config, {.tensors = false});
  const double weights_mib = static_cast<double>(info.storage_bytes) / (1024 * 1024);

  std::vector<std::string> args = {"--actor", config.dump(), "--input", options.input,
                                   "--batches", std::to_string(options.batches), "--threads",
                                   std::to_string(options.threads)};
  if (!options.model.empty()) args.insert(args.end(), {"--model", options.model});
  std::printf("%d workers each run ActorWrapper::from_actor(config).load() and serve %d batches of %s\n",
              options.workers, options.batches, options.input.c_str());
  std::printf("  config: %s (%.1f MiB of weights, mapped once and shared by all workers)\n\n",
              config["blob"].get<std::string>().c_str(), weights_mib);

  std::vector<Worker> workers;
  for (int i = 0; i < options.workers; ++i) workers.push_back(start_worker(args));
  std::vector<nlohmann::json> reports;
  for (int i = 0; i < options.workers; ++i) {
    reports.push_back(workers[i].finish(i));
    if (!reports.back().value("ok", false)) {
      throw Error(ErrorCode::kInternal, "worker " + std::to_string(i) + " failed: " +
                                            reports.back().value("error", std::string("(no message)")));
    }
  }

  std::printf("%-7s %9s %9s  %s\n", "worker", "load ms", "batch ms", "output");
  for (size_t i = 0; i < reports.size(); ++i) {
    std::printf("%-7zu %9.1f %9.2f  %s\n", i, reports[i]["load_ms"].get<double>(), reports[i]["batch_ms"].get<double>(),
                reports[i]["output"].get<std::string>().c_str());
  }
  const std::string checksum = reports.front()["checksum"];
  for (size_t i = 1; i < reports.size(); ++i) {
    if (reports[i]["checksum"] != checksum) {
      std::fprintf(stderr, "zcwrap-sample: error: worker %zu's output differs from worker 0's\n", i);
      return 1;
    }
  }
  const std::string all = reports.size() == 1 ? "the one worker" : reports.size() == 2 ? "both workers"
                                                                   : "all " + std::to_string(reports.size()) + " workers";
  std::printf("\noutputs: bit-equal in %s (FNV-1a %s)\n", all.c_str(), checksum.c_str());
  std::printf("memory, and a comparison with torch::jit::load: zcwrap bench %s --workers %d --input %s "
              "--baseline %s\n",
              options.config.c_str(), options.workers, options.input.c_str(),
              names.size() == 1 ? "ORIGINAL.pt" : "NAME=ORIGINAL.pt (once per model)");
  return 0;
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
