// A child process for the benchmarks that start the real binaries: its stdout/stderr go to a
// log file, it dies with the bench (PR_SET_PDEATHSIG), and the destructor stops it — SIGTERM
// with up to 20 s to drain, or SIGKILL at once.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace despool::bench {

class Child {
 public:
  enum class Stop { kDrain, kKill };

  Child(std::vector<std::string> argv, const std::string& log, Stop stop = Stop::kKill) : stop_(stop) {
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      FILE* f = std::freopen(log.c_str(), "a", stderr);
      (void)f;
      ::dup2(2, 1);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Child() {
    if (pid_ <= 0) return;
    int status = 0;
    if (stop_ == Stop::kDrain) {
      ::kill(pid_, SIGTERM);
      for (int i = 0; i < 200; ++i) {  // up to 20 s for the drain
        if (::waitpid(pid_, &status, WNOHANG) == pid_) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

 private:
  pid_t pid_ = -1;
  Stop stop_;
};

}  // namespace despool::bench
