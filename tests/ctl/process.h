// Running despoolctl (and other programs) from tests: capture stdout/stderr and the exit code,
// follow the output of a long-running process until a condition holds (with a deadline), and
// always stop what was started.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace despool::testing {

inline std::string BinDir() {
  const char* d = std::getenv("DESPOOL_BIN_DIR");
  return d ? d : "";
}
inline std::string Despoolctl() { return BinDir() + "/despoolctl"; }

struct RunResult {
  int exit_code = -1;   // -1: killed by a signal or by the deadline
  std::string out;
  std::string err;
  std::chrono::milliseconds elapsed{0};
};

// A child process with its stdout/stderr on pipes (or its terminal on a pty).
class Child {
 public:
  // `use_pty`: stdout and stderr go to a pseudo-terminal (forkpty); err() stays empty.
  Child(const std::vector<std::string>& argv, bool use_pty = false,
        const std::vector<std::string>& extra_env = {}) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    if (use_pty) {
      winsize ws{};
      ws.ws_col = 100;
      ws.ws_row = 30;
      int master = -1;
      pid_ = forkpty(&master, nullptr, nullptr, &ws);
      if (pid_ < 0) throw std::runtime_error("forkpty failed");
      if (pid_ == 0) {
        for (const auto& e : extra_env) putenv(const_cast<char*>(e.c_str()));
        execv(args[0], args.data());
        _exit(127);
      }
      out_fd_ = master;
    } else {
      int out_pipe[2], err_pipe[2];
      if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
      pid_ = fork();
      if (pid_ < 0) throw std::runtime_error("fork failed");
      if (pid_ == 0) {
        dup2(out_pipe[1], 1);
        dup2(err_pipe[1], 2);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) dup2(devnull, 0);
        for (const auto& e : extra_env) putenv(const_cast<char*>(e.c_str()));
        execv(args[0], args.data());
        _exit(127);
      }
      close(out_pipe[1]);
      close(err_pipe[1]);
      out_fd_ = out_pipe[0];
      err_fd_ = err_pipe[0];
    }
    start_ = std::chrono::steady_clock::now();
  }
  ~Child() {
    Stop();
    if (out_fd_ >= 0) close(out_fd_);
    if (err_fd_ >= 0) close(err_fd_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }

  // Reads output until `done(out, err)` holds, the child closes its output, or the deadline.
  bool ReadUntil(const std::function<bool(const std::string&, const std::string&)>& done,
                 std::chrono::milliseconds within) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    for (;;) {
      if (done(out_, err_)) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      if (!ReadSome(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now))) return done(out_, err_);
    }
  }

  // Waits for the child to exit (killing it at the deadline) and drains its output.
  RunResult Wait(std::chrono::milliseconds within) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (out_fd_ >= 0 || err_fd_ >= 0) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) break;
      if (!ReadSome(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now))) break;
    }
    RunResult r;
    if (pid_ > 0) {
      int status = 0;
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline) {
        kill(pid_, SIGKILL);
      }
      // Output closed: the child is exiting; wait for it (bounded by the kill above).
      while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      pid_ = -1;
    }
    r.out = out_;
    r.err = err_;
    r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start_);
    return r;
  }

  // SIGTERM, then SIGKILL if it does not exit within 5 s.
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    if (!WaitExit(std::chrono::seconds(5))) kill(pid_, SIGKILL);
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

  // True when the child exited within `within` (a pidfd becomes readable on exit).
  bool WaitExit(std::chrono::milliseconds within) {
    const int pfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
    if (pfd < 0) return false;
    pollfd p{pfd, POLLIN, 0};
    const int n = poll(&p, 1, static_cast<int>(within.count()));
    close(pfd);
    return n > 0;
  }

 private:
  // One poll over the open descriptors; false when both are closed or nothing came in time.
  bool ReadSome(std::chrono::milliseconds within) {
    std::vector<pollfd> fds;
    if (out_fd_ >= 0) fds.push_back({out_fd_, POLLIN, 0});
    if (err_fd_ >= 0) fds.push_back({err_fd_, POLLIN, 0});
    if (fds.empty()) return false;
    const int n = poll(fds.data(), fds.size(), static_cast<int>(std::max<long>(within.count(), 0)));
    if (n <= 0) return n < 0 && errno == EINTR;
    for (auto& p : fds) {
      if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[8192];
      const ssize_t got = read(p.fd, buf, sizeof buf);
      std::string& into = p.fd == out_fd_ ? out_ : err_;
      if (got > 0) {
        into.append(buf, static_cast<std::size_t>(got));
      } else {
        // EOF (or EIO on a pty whose child exited).
        if (p.fd == out_fd_) {
          close(out_fd_);
          out_fd_ = -1;
        } else {
          close(err_fd_);
          err_fd_ = -1;
        }
      }
    }
    return true;
  }

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  std::string out_, err_;
  std::chrono::steady_clock::time_point start_;
};

// Runs a program to completion (killed after `within`).
inline RunResult Run(const std::vector<std::string>& argv,
                     std::chrono::milliseconds within = std::chrono::seconds(30)) {
  Child c(argv);
  return c.Wait(within);
}

// Runs despoolctl with these arguments.
inline RunResult Ctl(const std::vector<std::string>& args,
                     std::chrono::milliseconds within = std::chrono::seconds(30)) {
  std::vector<std::string> argv{Despoolctl()};
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv, within);
}

}  // namespace despool::testing
