// Test helpers: a separate process that keeps a file "in use" in one of the three ways a reader
// can (an open descriptor, a mapping whose descriptor is closed, a running executable).
//
//   HolderProcess holder(HolderProcess::Mode::kOpen, path);
//   ASSERT_TRUE(holder.ready()) << holder.error();
//   ... holder.pid() holds `path` ...
//   holder.Stop();   // or let the destructor do it: SIGKILL + waitpid
//
// Readiness comes through a pipe (no sleeps): the child reports after it opened/mapped the file;
// for kExec the pipe is close-on-exec, so EOF means the exec succeeded (the file is then the
// child's executable and mapped). After Stop() returns the child is reaped, so the kernel has
// released its files.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace despool::testing {

class HolderProcess {
 public:
  enum class Mode {
    kOpen,  // open(path, O_RDONLY) and keep the descriptor
    kMmap,  // open, mmap(PROT_READ, MAP_SHARED) one page, close the descriptor, keep the mapping
    kExec,  // execv(path, args): path must be an executable (see CopyExecutable)
  };

  // comm: the child's /proc/<pid>/comm for kOpen/kMmap (kExec gets the executable's name).
  // exec_args: argv[1..] for kExec (e.g. {"3600"} for a copy of sleep).
  HolderProcess(Mode mode, std::string path, std::vector<std::string> exec_args = {},
                std::string comm = "inuse-holder")
      : path_(std::move(path)) {
    std::vector<std::string> argv_storage;
    std::vector<char*> argv;
    if (mode == Mode::kExec) {
      argv_storage.push_back(std::filesystem::path(path_).filename().string());
      for (auto& a : exec_args) argv_storage.push_back(a);
      for (auto& a : argv_storage) argv.push_back(a.data());
      argv.push_back(nullptr);
    }
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      error_ = std::string("pipe2: ") + std::strerror(errno);
      return;
    }
    pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) {
      error_ = std::string("fork: ") + std::strerror(errno);
      ::close(fds[0]);
      ::close(fds[1]);
      pid_ = 0;
      return;
    }
    if (pid_ == 0) {
      // Child: async-signal-safe calls only. Dies with the test process.
      ::close(fds[0]);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      if (mode == Mode::kExec) {
        ::execv(path_.c_str(), argv.data());
        ChildFail(fds[1], errno);
      }
      ::prctl(PR_SET_NAME, comm.c_str());
      int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) ChildFail(fds[1], errno);
      if (mode == Mode::kMmap) {
        void* p = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) ChildFail(fds[1], errno);
        ::close(fd);
      }
      char ok = 'R';
      if (::write(fds[1], &ok, 1) != 1) ::_exit(1);
      ::close(fds[1]);
      for (;;) ::pause();
    }
    ::close(fds[1]);
    error_ = WaitReady(fds[0], mode);
    ::close(fds[0]);
  }

  ~HolderProcess() { Stop(); }
  HolderProcess(const HolderProcess&) = delete;
  HolderProcess& operator=(const HolderProcess&) = delete;

  bool ready() const { return pid_ > 0 && error_.empty(); }
  const std::string& error() const { return error_; }
  pid_t pid() const { return pid_; }
  const std::string& path() const { return path_; }

  // Kills and reaps the child (idempotent). When it returns, the file is no longer held.
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = 0;
  }

  // Copies an executable (e.g. /bin/sleep) to dst, mode 0755, for Mode::kExec.
  static void CopyExecutable(const std::string& src, const std::string& dst) {
    std::filesystem::copy_file(src, dst, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::permissions(dst, std::filesystem::perms(0755));
  }

 private:
  [[noreturn]] static void ChildFail(int fd, int err) {
    char buf[1 + sizeof(int)];
    buf[0] = 'E';
    std::memcpy(buf + 1, &err, sizeof(int));
    if (::write(fd, buf, sizeof(buf)) < 0) {
    }
    ::_exit(127);
  }

  // Returns "" when the child is ready. Bounded: a child that says nothing for 30 s is an error.
  std::string WaitReady(int fd, Mode mode) {
    char buf[1 + sizeof(int)];
    std::size_t got = 0;
    while (got < sizeof(buf)) {
      pollfd p{fd, POLLIN, 0};
      int rc = ::poll(&p, 1, 30000);
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) return "holder: no readiness report within 30 s";
      ssize_t n = ::read(fd, buf + got, sizeof(buf) - got);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return std::string("holder: read: ") + std::strerror(errno);
      if (n == 0) break;
      got += static_cast<std::size_t>(n);
      if (buf[0] == 'R') return "";
    }
    if (got == 0 && mode == Mode::kExec) {
      // EOF: close-on-exec fired, so the exec succeeded — unless the child died before it.
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == 0) return "";
      pid_ = 0;
      return "holder: child exited before exec";
    }
    if (got == sizeof(buf) && buf[0] == 'E') {
      int err = 0;
      std::memcpy(&err, buf + 1, sizeof(int));
      Stop();
      return "holder: child failed: " + std::string(std::strerror(err));
    }
    Stop();
    return "holder: child exited without a readiness report";
  }

  std::string path_;
  pid_t pid_ = 0;
  std::string error_;
};

}  // namespace despool::testing
