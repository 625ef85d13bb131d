// Multi-process harness for the worker service tests: the real despool-broker and
// despool-worker binaries (from DESPOOL_BIN_DIR) on loopback with ports picked at run time,
// a raw-protocol frontend client (messages/ codec over a DEALER), polling with deadlines, and
// RAII guards that stop every process a test starts.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "support/test_support.h"
#include "despool/common/zmq_wait.h"
#include "despool/messages/codec.h"
#include "despool/messages/types.h"

namespace despool::workertest {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

using testsupport::BinDir;

using testsupport::TempDir;

inline void WriteFile(const std::string& path, const std::string& content) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
  if (!f.good()) throw std::runtime_error("write " + path);
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Relative path -> content ("<dir>" for directories, "-> target" for symlinks).
inline std::map<std::string, std::string> Snapshot(const std::string& root) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  if (!fs::exists(root, ec)) return out;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const std::string rel = fs::relative(it->path(), root).string();
    if (it->is_symlink()) {
      out[rel] = "-> " + fs::read_symlink(it->path()).string();
    } else if (it->is_directory()) {
      out[rel] = "<dir>";
    } else {
      out[rel] = ReadFile(it->path().string());
    }
  }
  return out;
}

// Polls `cond` every 20 ms until it holds or `within` passes.
inline bool WaitFor(const std::function<bool()>& cond, milliseconds within) {
  const auto deadline = Clock::now() + within;
  for (;;) {
    if (cond()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(milliseconds(20));  // polling interval, not synchronisation
  }
}

// A child process with stdout+stderr appended to a log file. The destructor SIGKILLs and reaps.
class Process {
 public:
  Process(std::vector<std::string> argv, std::string log_path) : argv_(std::move(argv)), log_(std::move(log_path)) {
    std::vector<char*> args;
    for (auto& a : argv_) args.push_back(a.data());
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);
      const int fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      const int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      // Signals blocked by the test runner's threads must not leak into the child.
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Process() { Kill(); }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }
  std::string log() const { return ReadFile(log_); }

  void Signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Waits for exit; the exit code, -2 for a signal death, nullopt on timeout.
  std::optional<int> Wait(milliseconds within) {
    if (pid_ <= 0) return exit_code_;
    const int pfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
    if (pfd >= 0) {
      pollfd p{pfd, POLLIN, 0};
      int n;
      do {
        n = ::poll(&p, 1, static_cast<int>(within.count()));
      } while (n < 0 && errno == EINTR);
      ::close(pfd);
      if (n == 0) return std::nullopt;
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -2;
    return exit_code_;
  }
  // SIGTERM, then the exit code (SIGKILL after `within`).
  std::optional<int> Terminate(milliseconds within = milliseconds(20000)) {
    Signal(SIGTERM);
    auto rc = Wait(within);
    if (!rc) Kill();
    return rc;
  }
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    Wait(milliseconds(10000));
  }

 private:
  std::vector<std::string> argv_;
  std::string log_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

struct BrokerEndpoints {
  std::string frontend, backend, events;
};

// despool-broker in a temp dir. Ports: '*' first; Restart() reuses the bound ones.
class Broker {
 public:
  // heartbeat: the interval the broker hands workers; orphan_grace: how long a job running at a
  // broker restart waits for its worker's result.
  Broker(const std::string& dir, milliseconds heartbeat = milliseconds(250),
         milliseconds orphan_grace = milliseconds(30000))
      : dir_(dir) {
    std::ofstream cfg(dir_ + "/broker.toml");
    cfg << "[heartbeat]\ninterval = \"" << heartbeat.count() << "ms\"\nliveness = 3\norphan_grace = \""
        << orphan_grace.count() << "ms\"\n";
    cfg.close();
    Start("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
  }
  const BrokerEndpoints& endpoints() const { return ep_; }
  Process& process() { return *proc_; }
  std::string log() const { return ReadFile(dir_ + "/broker.log"); }

  void Kill9() { proc_->Kill(); }
  void Restart() {
    proc_->Kill();
    Start(ep_.frontend, ep_.backend, ep_.events);
  }

 private:
  void Start(const std::string& fe, const std::string& be, const std::string& ev) {
    const std::string epf = dir_ + "/endpoints";
    std::error_code ec;
    fs::remove(epf, ec);
    proc_ = std::make_unique<Process>(
        std::vector<std::string>{BinDir() + "/despool-broker", "--config", dir_ + "/broker.toml", "--frontend", fe,
                                 "--backend", be, "--events", ev, "--store", dir_ + "/broker.db", "--endpoints-file",
                                 epf, "--sync-normal"},
        dir_ + "/broker.log");
    if (!WaitFor([&] { return fs::exists(epf); }, milliseconds(15000))) {
      throw std::runtime_error("broker did not start: " + log());
    }
    std::ifstream f(epf);
    std::string line;
    while (std::getline(f, line)) {
      const auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      const std::string k = line.substr(0, eq), v = line.substr(eq + 1);
      if (k == "frontend") ep_.frontend = v;
      if (k == "backend") ep_.backend = v;
      if (k == "events") ep_.events = v;
    }
  }

  std::string dir_;
  BrokerEndpoints ep_;
  std::unique_ptr<Process> proc_;
};

// A despool-worker. Extra args follow --broker/--name/--dp.
inline std::unique_ptr<Process> StartWorker(const std::string& dir, const std::string& backend,
                                            const std::string& name, const std::vector<std::string>& dps,
                                            const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv{BinDir() + "/despool-worker", "--broker", backend, "--name", name};
  for (const auto& dp : dps) {
    argv.push_back("--dp");
    argv.push_back(dp);
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  return std::make_unique<Process>(argv, dir + "/" + name + ".log");
}

// A frontend client speaking the raw protocol. Each request has its own timeout; a timed-out
// socket is replaced.
class Frontend {
 public:
  explicit Frontend(std::string endpoint) : endpoint_(std::move(endpoint)) { Reset(); }

  msg::Body Request(msg::Body body, milliseconds timeout = milliseconds(10000)) {
    const std::uint64_t id = next_id_++;
    const std::string payload = msg::Encode(msg::Envelope{msg::kProtocolVersion, id, std::move(body)});
    sock_->send(zmq::buffer(payload), zmq::send_flags::none);
    const auto deadline = Clock::now() + timeout;
    while (WaitReadable(*sock_, deadline)) {
      zmq::message_t m;
      if (!sock_->recv(m, zmq::recv_flags::dontwait)) continue;
      auto decoded = msg::Decode(std::string_view(static_cast<const char*>(m.data()), m.size()));
      if (!decoded.ok()) throw std::runtime_error("undecodable reply: " + decoded.error().message);
      if (decoded.value().request_id != id) continue;
      return std::move(decoded.value().body);
    }
    Reset();
    throw std::runtime_error("no reply from broker within the timeout");
  }

  std::vector<std::string> Submit(const msg::Instruction& instruction) {
    msg::SubmitRequest req;
    req.instructions.push_back(instruction);
    msg::Body reply = Request(req);
    if (auto* e = std::get_if<msg::ErrorReply>(&reply)) throw std::runtime_error("submit refused: " + e->message);
    std::vector<std::string> ids;
    for (const auto& j : std::get<msg::SubmitReply>(reply).jobs) ids.push_back(j.id);
    return ids;
  }

  std::vector<msg::JobInfo> Status(msg::StatusRequest req) {
    msg::Body reply = Request(req);
    if (auto* e = std::get_if<msg::ErrorReply>(&reply)) throw std::runtime_error("status refused: " + e->message);
    return std::get<msg::JobsReply>(reply).jobs;
  }

  msg::JobInfo Job(const std::string& id) {
    msg::StatusRequest req;
    req.job_id = id;
    auto jobs = Status(req);
    if (jobs.size() != 1) throw std::runtime_error("status of " + id + ": " + std::to_string(jobs.size()) + " jobs");
    return jobs[0];
  }

  std::vector<msg::JobInfo> AllJobs() {
    msg::StatusRequest req;
    req.limit = 0;
    return Status(req);
  }

  std::vector<msg::WorkerInfo> Workers() {
    msg::Body reply = Request(msg::WorkersRequest{});
    if (auto* e = std::get_if<msg::ErrorReply>(&reply)) throw std::runtime_error("workers refused: " + e->message);
    return std::get<msg::WorkersReply>(reply).workers;
  }

  std::vector<std::string> Verify(const std::string& dp, const std::string& package, bool repair) {
    msg::VerifyRequest req;
    req.dp = dp;
    if (!package.empty()) req.package = package;
    req.repair = repair;
    msg::Body reply = Request(req);
    if (auto* e = std::get_if<msg::ErrorReply>(&reply)) throw std::runtime_error("verify refused: " + e->message);
    std::vector<std::string> ids;
    for (const auto& j : std::get<msg::JobsReply>(reply).jobs) ids.push_back(j.id);
    return ids;
  }

  bool HasWorker(const std::string& name) {
    for (const auto& w : Workers()) {
      if (w.name == name) return true;
    }
    return false;
  }

  // Polls until every job in `ids` is terminal.
  bool WaitTerminal(const std::vector<std::string>& ids, milliseconds within) {
    return WaitFor(
        [&] {
          for (const auto& id : ids) {
            if (!msg::IsTerminal(Job(id).state)) return false;
          }
          return true;
        },
        within);
  }

 private:
  void Reset() {
    sock_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
    sock_->set(zmq::sockopt::linger, 0);
    sock_->connect(endpoint_);
  }

  std::string endpoint_;
  zmq::context_t ctx_{1};
  std::unique_ptr<zmq::socket_t> sock_;
  std::uint64_t next_id_ = 1;
};

inline msg::Instruction Refresh(const std::string& package, std::uint64_t version, const std::string& source,
                                const std::string& dp, milliseconds retry_base = milliseconds(0)) {
  msg::Instruction in;
  in.package = package;
  in.version = version;
  in.source = source;
  in.dps = {dp};
  if (retry_base.count() > 0) {
    in.policy.retry_base_ms = static_cast<std::uint64_t>(retry_base.count());
    in.policy.retry_max_ms = static_cast<std::uint64_t>(retry_base.count()) * 4;
  }
  return in;
}

// A small source tree: `files` files of `bytes` bytes each, content depending on `seed`.
inline void MakeSource(const std::string& dir, int files, std::size_t bytes, const std::string& seed) {
  for (int i = 0; i < files; ++i) {
    std::string content = seed + "/" + std::to_string(i) + "\n";
    while (content.size() < bytes) content += content;
    content.resize(std::max(bytes, std::size_t{1}));
    WriteFile(dir + "/d" + std::to_string(i % 3) + "/f" + std::to_string(i) + ".dat", content);
  }
}

}  // namespace despool::workertest
