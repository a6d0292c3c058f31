#include "worker_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>

#include "zcwrap/error.hpp"

namespace zcwrap::cli {

WorkerProcess::WorkerProcess(std::string name, pid_t pid, detail::UniqueFd socket)
    : name_(std::move(name)), pid_(pid), socket_(std::move(socket)) {}

WorkerProcess::WorkerProcess(WorkerProcess&& other) noexcept
    : name_(std::move(other.name_)), pid_(std::exchange(other.pid_, -1)), socket_(std::move(other.socket_)) {}

WorkerProcess& WorkerProcess::operator=(WorkerProcess&& other) noexcept {
  if (this != &other) {
    kill_and_reap();
    name_ = std::move(other.name_);
    pid_ = std::exchange(other.pid_, -1);
    socket_ = std::move(other.socket_);
  }
  return *this;
}

WorkerProcess::~WorkerProcess() { kill_and_reap(); }

void WorkerProcess::kill_and_reap() noexcept {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

WorkerProcess WorkerProcess::start(const std::string& name, const std::vector<std::string>& args) {
  // Everything the child needs is built before fork: after it, only
  // async-signal-safe calls.
  std::vector<std::string> strings = {"zcwrap"};
  strings.insert(strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  int fds[2];
  // CLOEXEC on both ends: a worker must not inherit the sockets of the
  // workers started before it, or their EOF would never come.
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    throw Error(ErrorCode::kInternal, "socketpair: " + detail::errno_text(errno));
  }
  detail::UniqueFd driver_end(fds[0]);
  detail::UniqueFd worker_end(fds[1]);
  const pid_t driver = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw Error(ErrorCode::kInternal, "fork: " + detail::errno_text(errno));
  if (pid == 0) {
    // PDEATHSIG fires when the thread that forked exits; the driver forks
    // from its main thread. The getppid check covers a driver that died
    // before prctl.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != driver) ::_exit(127);
    const int fd = worker_end.get();
    // dup2 onto itself would keep CLOEXEC, so clear the flag by hand then.
    if (fd == kReportFd ? ::fcntl(fd, F_SETFD, 0) != 0 : ::dup2(fd, kReportFd) < 0) ::_exit(127);
    // Whatever LibTorch prints goes to stderr: the driver's stdout may be JSON.
    if (::dup2(STDERR_FILENO, STDOUT_FILENO) < 0) ::_exit(127);
    ::execv("/proc/self/exe", argv.data());
    static const char kMessage[] = "zcwrap: error: cannot exec /proc/self/exe for a bench worker\n";
    const ssize_t ignored = ::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    (void)ignored;
    ::_exit(127);
  }
  return WorkerProcess(name + " (pid " + std::to_string(pid) + ")", pid, std::move(driver_end));
}

nlohmann::json WorkerProcess::read_report(Clock::time_point deadline) {
  std::string line;
  char buf[4096];
  while (line.find('\n') == std::string::npos) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd pfd{socket_.get(), POLLIN, 0};
    const int ready = ::poll(&pfd, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) throw Error(ErrorCode::kInternal, name_ + ": poll: " + detail::errno_text(errno));
    if (ready == 0) throw Error(ErrorCode::kInternal, name_ + " sent no report in time (see --timeout); killed it");
    const ssize_t n = ::read(socket_.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorCode::kInternal, name_ + ": read: " + detail::errno_text(errno));
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

void WorkerProcess::release() { socket_ = detail::UniqueFd(); }

int WorkerProcess::reap(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  for (;;) {
    const pid_t done = ::waitpid(pid_, &status, WNOHANG);
    if (done == pid_) break;
    if (done < 0 && errno != EINTR) throw Error(ErrorCode::kInternal, name_ + ": waitpid: " + detail::errno_text(errno));
    if (Clock::now() >= deadline) {
      ::kill(pid_, SIGKILL);
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  pid_ = -1;
  return status;
}

std::string wait_status_text(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "was killed by signal " + std::to_string(WTERMSIG(status)) + " (" + ::strsignal(WTERMSIG(status)) + ")";
  }
  return "stopped with wait status " + std::to_string(status);
}

bool send_report(const nlohmann::json& report) {
  const std::string line = report.dump() + "\n";
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t n = ::write(kReportFd, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::fprintf(stderr, "zcwrap: error: bench worker: cannot report on fd %d: %s\n", kReportFd,
                   std::strerror(errno));
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

void wait_for_driver() {
  char buf[64];
  for (;;) {
    const ssize_t n = ::read(kReportFd, buf, sizeof(buf));
    if (n == 0 || (n < 0 && errno != EINTR)) return;
  }
}

}  // namespace zcwrap::cli
