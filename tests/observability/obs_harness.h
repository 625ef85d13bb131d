// Observability tests: the real despool-broker with its HTTP endpoint on an ephemeral loopback
// port (read back from the endpoints file), an HTTP client, and helpers that run real programs
// (despoolctl, Debian's /usr/bin/python3 with prometheus_client, chromium) and capture stdout.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "broker/process_harness.h"

namespace despool::obs::testing {

using namespace despool::broker::testing;
using nlohmann::json;

struct RunResult {
  int exit_code = -1;       // -1: killed, not started or timed out
  std::string out;
};

// Runs argv (no shell) with stdout captured, stderr to `stderr_path` (or /dev/null), bounded by
// `timeout` (the child is killed when it passes).
inline RunResult RunProgram(const std::vector<std::string>& argv, std::chrono::milliseconds timeout = 60s,
                     const std::string& stderr_path = "/dev/null") {
  RunResult result;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return result;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], 1);
    const int err = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (err >= 0) ::dup2(err, 2);
    const int in = ::open("/dev/null", O_RDONLY);
    if (in >= 0) ::dup2(in, 0);
    ::setpgid(0, 0);  // its own group: a timeout kills helpers it started (chromium)
    std::vector<std::string> args = argv;
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    ::execv(cargs[0], cargs.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  if (pid < 0) {
    ::close(fds[0]);
    return result;
  }
  ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  bool reaped = false, eof = false;
  char buf[65536];
  while (true) {
    ssize_t n;
    while (!eof && (n = ::read(fds[0], buf, sizeof buf)) != 0) {
      if (n < 0) break;
      result.out.append(buf, static_cast<std::size_t>(n));
    }
    if (!eof && n == 0) eof = true;
    if (!reaped && ::waitpid(pid, &status, WNOHANG) == pid) reaped = true;
    // Done when the child exited and the pipe is drained (descendants may keep it open: what
    // they write after the child exited is not waited for).
    if (reaped) {
      while ((n = ::read(fds[0], buf, sizeof buf)) > 0) result.out.append(buf, static_cast<std::size_t>(n));
      break;
    }
    if (Clock::now() > deadline) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      ::close(fds[0]);
      return result;
    }
    if (eof) {
      std::this_thread::sleep_for(5ms);  // polling interval while the child exits
    } else {
      std::vector<zmq_pollitem_t> items = {{nullptr, fds[0], ZMQ_POLLIN, 0}};
      zmq::poll(items, std::chrono::milliseconds(20));
    }
  }
  ::kill(-pid, SIGKILL);  // leftovers of its process group, if any
  ::close(fds[0]);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// A broker with [http] listen = 127.0.0.1:0 (plus `extra_config`), stopped by the destructor.
class ObsBroker {
 public:
  explicit ObsBroker(const std::string& extra_config = "", const std::string& token = "")
      : proc_(dir_.path(), "[http]\nlisten = \"127.0.0.1:0\"\n" +
                               (token.empty() ? std::string() : "token = \"" + token + "\"\n") + extra_config) {}
  ~ObsBroker() { proc_.Stop(); }

  bool Start() {
    if (!proc_.Start()) return false;
    std::ifstream f(dir_ / "endpoints");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("http=", 0) == 0) url = line.substr(5);
    }
    return !url.empty();
  }

  BrokerProcess& proc() { return proc_; }
  const TempDir& dir() const { return dir_; }
  std::string url;  // http://127.0.0.1:PORT

  struct Response {
    int status = 0;
    std::string body;
    httplib::Headers headers;
  };
  Response Get(const std::string& path, const httplib::Headers& headers = {}) const {
    httplib::Client c(url);
    c.set_connection_timeout(5, 0);
    c.set_read_timeout(10, 0);
    auto r = c.Get(path, headers);
    if (!r) return {};
    return {r->status, r->body, r->headers};
  }
  json GetJson(const std::string& path) const {
    auto r = Get(path);
    EXPECT_EQ(r.status, 200) << path << ": " << r.body;
    return json::parse(r.body, nullptr, false);
  }

  // despoolctl --broker FRONTEND --events EVENTS --json ARGS...; its parsed stdout.
  json Ctl(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {BinDir() + "/despoolctl", "--broker", proc_.frontend, "--events", proc_.events,
                                     "--json", "--timeout", "10s"};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunProgram(argv, 30s);
    EXPECT_EQ(r.exit_code, 0) << "despoolctl failed: " << r.out;
    return json::parse(r.out, nullptr, false);
  }

 private:
  TempDir dir_;
  mutable BrokerProcess proc_;
};

// One parsed sample: "name{a=\"x\",b=\"y\"}" (labels sorted) -> value.
using Samples = std::map<std::string, double>;

// Parses Prometheus text with the real parser (python3-prometheus-client, Debian's python).
// Returns false (with a failure recorded) when the parser rejects the text.
inline bool ParseMetrics(const std::string& text, const TempDir& dir, Samples* out,
                         std::map<std::string, std::string>* types = nullptr) {
  const std::string file = dir / "metrics.txt";
  std::ofstream(file, std::ios::trunc) << text;
  static const char* kScript = R"py(
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
with open(sys.argv[1]) as f:
    for fam in text_string_to_metric_families(f.read()):
        for s in fam.samples:
            out.append([fam.name, fam.type, s.name, s.labels, s.value])
print(json.dumps(out))
)py";
  auto r = RunProgram({"/usr/bin/python3", "-c", kScript, file}, 60s, dir / "python.err");
  if (r.exit_code != 0) {
    std::ifstream e(dir / "python.err");
    std::stringstream ss;
    ss << e.rdbuf();
    ADD_FAILURE() << "prometheus_client parser rejected /metrics: " << ss.str();
    return false;
  }
  json parsed = json::parse(r.out, nullptr, false);
  if (!parsed.is_array()) {
    ADD_FAILURE() << "parser output is not JSON: " << r.out;
    return false;
  }
  for (const auto& s : parsed) {
    std::string key = s[2].get<std::string>();
    std::map<std::string, std::string> labels = s[3].get<std::map<std::string, std::string>>();
    if (!labels.empty()) {
      key += "{";
      bool first = true;
      for (const auto& [k, v] : labels) {
        key += (first ? "" : ",") + k + "=\"" + v + "\"";
        first = false;
      }
      key += "}";
    }
    (*out)[key] = s[4].get<double>();
    if (types) (*types)[s[0].get<std::string>()] = s[1].get<std::string>();
  }
  return true;
}

inline double Value(const Samples& s, const std::string& key) {
  auto it = s.find(key);
  if (it == s.end()) {
    ADD_FAILURE() << "no sample " << key;
    return -1;
  }
  return it->second;
}

}  // namespace despool::obs::testing
