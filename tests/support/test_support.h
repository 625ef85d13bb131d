// Small helpers shared by the test suites: a private temporary directory and where the built
// binaries are.
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace despool::testsupport {

// The directory holding despool-broker, despool-worker and despoolctl (tests/test_main.cpp
// defaults DESPOOL_BIN_DIR to this build's bin/).
inline std::string BinDir() {
  const char* d = std::getenv("DESPOOL_BIN_DIR");
  return d ? d : "";
}

// A private temporary directory, removed with everything in it at destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "despool-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    namespace fs = std::filesystem;
    std::error_code ec;
    // Staged/retired dirs may carry read-only modes: open them up before removing.
    for (auto it = fs::recursive_directory_iterator(path_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec) && !it->is_symlink(ec)) ::chmod(it->path().c_str(), 0700);
    }
    fs::remove_all(path_, ec);
    if (ec && fs::exists(path_)) {
      // Paths over PATH_MAX (hostile-source tests): rm walks with *at calls.
      std::string cmd = "rm -rf --one-file-system '" + path_ + "'";
      if (std::system(cmd.c_str()) != 0) {
      }
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// For a forked child: sends its stdout and stderr to `log` (appended to, or truncated first)
// and execs args[0] with `args`. Never returns: exit status 127 when the exec fails.
[[noreturn]] inline void ExecWithOutputTo(std::vector<std::string> args, const std::string& log,
                                          bool append = true) {
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0644);
  if (fd >= 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(argv[0], argv.data());
  ::_exit(127);
}

}  // namespace despool::testsupport
