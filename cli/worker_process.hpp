// A child process that is this binary run again, with a socket to report
// on: what `zcwrap bench` starts its workers with. Torch-free.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "file_util.hpp"

namespace zcwrap::cli {

/// The worker's end of its socket with the driver.
constexpr int kReportFd = 3;

/// A started worker and the driver's end of its socket. Move-only;
/// destroying it kills (SIGKILL) and reaps the process unless reap() already
/// did, so no way out of the driver, an exception included, leaves a worker
/// behind. The worker itself gets SIGKILL if the driver dies first
/// (PR_SET_PDEATHSIG).
class WorkerProcess {
 public:
  using Clock = std::chrono::steady_clock;

  /// Starts `/proc/self/exe ARGS...` (fork, then exec at once: LibTorch's
  /// thread pools do not survive a fork) with its end of a socketpair as fd
  /// kReportFd and its stdout sent to stderr, so the driver's stdout stays
  /// its own. `name` is for messages ("zcwrap worker 2"). Throws
  /// Error(kInternal) when the process cannot be started.
  static WorkerProcess start(const std::string& name, const std::vector<std::string>& args);

  WorkerProcess(WorkerProcess&& other) noexcept;
  WorkerProcess& operator=(WorkerProcess&& other) noexcept;
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;
  ~WorkerProcess();

  /// "zcwrap worker 2 (pid 4711)".
  const std::string& name() const { return name_; }
  pid_t pid() const { return pid_; }

  /// Reads the worker's one JSON line. Throws Error(kInternal) naming the
  /// worker when it exits first (with how it exited), sends nothing before
  /// `deadline`, or sends something that is not JSON.
  nlohmann::json read_report(Clock::time_point deadline);

  /// Closes the driver's end: the worker, blocked reading its end, sees EOF
  /// and exits.
  void release();

  /// Waits up to `timeout` for the worker to exit, then kills it. Returns
  /// the wait status.
  int reap(std::chrono::milliseconds timeout);

 private:
  WorkerProcess(std::string name, pid_t pid, detail::UniqueFd socket);
  void kill_and_reap() noexcept;

  std::string name_;
  pid_t pid_ = -1;
  detail::UniqueFd socket_;
};

/// "exited with status 3", "was killed by signal 11 (Segmentation fault)".
std::string wait_status_text(int status);

/// Writes one line to kReportFd. False (with a message on stderr) when the
/// driver is gone or the process was started without the socket.
bool send_report(const nlohmann::json& report);

/// Blocks until the driver closes its end of the socket, or dies.
void wait_for_driver();

}  // namespace zcwrap::cli
