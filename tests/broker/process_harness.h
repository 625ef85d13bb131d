// Multi-process harness: runs the real despool-broker binary (found through DESPOOL_BIN_DIR)
// on ephemeral loopback ports, plus scripted clients and workers speaking the protocol over
// real DEALER sockets. Synchronisation is always "poll until an observable condition holds or a
// deadline passes"; every process started here is stopped by the harness.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "support/test_support.h"
#include "despool/common/zmq_wait.h"
#include "despool/messages/codec.h"
#include "despool/messages/types.h"

namespace despool::broker::testing {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

using testsupport::BinDir;

using testsupport::TempDir;

// Polls `cond` until it holds or `timeout` passes.
inline bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(5ms);  // polling interval, not a synchronisation point
  }
  return cond();
}

class BrokerProcess {
 public:
  BrokerProcess(std::string dir, std::string config_text = "") : dir_(std::move(dir)), config_(std::move(config_text)) {}
  ~BrokerProcess() { Kill9(); }

  std::string store_path() const { return dir_ + "/data/broker.db"; }
  pid_t pid() const { return pid_; }
  std::string log_path() const { return dir_ + "/broker.log"; }

  // Starts the broker and waits until it wrote its endpoints. Returns false on failure.
  bool Start() {
    const std::string bin = BinDir() + "/despool-broker";
    const std::string ep_file = dir_ + "/endpoints";
    std::filesystem::remove(ep_file);
    std::vector<std::string> args = {bin,
                                     "--frontend", "tcp://127.0.0.1:*",
                                     "--backend", "tcp://127.0.0.1:*",
                                     "--events", "tcp://127.0.0.1:*",
                                     "--store", store_path(),
                                     "--endpoints-file", ep_file,
                                     "--log-level", "debug"};
    if (!config_.empty()) {
      const std::string cfg = dir_ + "/broker.toml";
      std::ofstream(cfg) << config_;
      args.push_back("--config");
      args.push_back(cfg);
    }
    pid_ = ::fork();
    if (pid_ == 0) testsupport::ExecWithOutputTo(std::move(args), log_path());
    if (pid_ < 0) return false;
    const bool up = WaitFor(
        [&] {
          if (Exited()) return true;
          std::ifstream f(ep_file);
          std::string line;
          std::map<std::string, std::string> kv;
          while (std::getline(f, line)) {
            auto eq = line.find('=');
            if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
          }
          if (kv.size() < 3) return false;
          frontend = kv["frontend"];
          backend = kv["backend"];
          events = kv["events"];
          return true;
        },
        15s);
    return up && pid_ > 0 && !frontend.empty();
  }

  // SIGTERM and wait; returns the exit status (or -1).
  int Stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    int status = 0;
    if (!WaitFor([&] { return Reap(&status); }, 10s)) {
      Kill9();
      return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  void Kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  bool Exited() {
    int status = 0;
    return Reap(&status);
  }

  std::string Log() const {
    std::ifstream f(log_path());
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
  }

  std::string frontend, backend, events;

 private:
  bool Reap(int* status) {
    if (pid_ <= 0) return true;
    pid_t r = ::waitpid(pid_, status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      exit_status_ = *status;
      return true;
    }
    return false;
  }

  std::string dir_;
  std::string config_;
  pid_t pid_ = -1;
  int exit_status_ = 0;
};

// A DEALER peer that speaks envelopes.
class Peer {
 public:
  Peer(zmq::context_t& ctx, const std::string& endpoint) : sock_(ctx, zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.connect(endpoint);
  }
  virtual ~Peer() = default;

  void Send(msg::Body body, std::uint64_t request_id = 0) {
    SendRaw(msg::Encode(msg::Envelope{msg::kProtocolVersion, request_id, std::move(body)}));
  }
  void SendRaw(const std::string& frame) { sock_.send(zmq::buffer(frame), zmq::send_flags::none); }
  void SendFrames(const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      sock_.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

  // The next decodable envelope within `timeout`.
  std::optional<msg::Envelope> Recv(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (WaitReadable(sock_, deadline)) {
      zmq::message_t m;
      if (!sock_.recv(m, zmq::recv_flags::dontwait)) continue;
      auto d = msg::Decode(std::string_view(static_cast<const char*>(m.data()), m.size()), Limits());
      if (d.ok()) return std::move(d.value());
    }
    return std::nullopt;
  }

  static msg::DecodeLimits Limits() {
    msg::DecodeLimits l;
    l.max_frame_bytes = 64u << 20;
    return l;
  }

  zmq::socket_t& socket() { return sock_; }

 protected:
  zmq::socket_t sock_;
};

class Client : public Peer {
 public:
  using Peer::Peer;
  // One request, its reply (matched by id), or nullopt after `timeout`.
  std::optional<msg::Body> Call(msg::Body body, std::chrono::milliseconds timeout = 10s) {
    const std::uint64_t id = ++next_id_;
    Send(std::move(body), id);
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      auto e = Recv(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
      if (!e) break;
      if (e->request_id == id) return std::move(e->body);
    }
    return std::nullopt;
  }
  std::uint64_t NextId() { return ++next_id_; }

  std::vector<msg::JobRef> Submit(const msg::Instruction& in) {
    msg::SubmitRequest r;
    r.instructions.push_back(in);
    auto reply = Call(r);
    if (!reply) {
      ADD_FAILURE() << "no submit reply";
      return {};
    }
    if (auto* e = std::get_if<msg::ErrorReply>(&*reply)) {
      ADD_FAILURE() << "submit error: " << e->message;
      return {};
    }
    return std::get<msg::SubmitReply>(*reply).jobs;
  }

  std::optional<msg::JobInfo> Status(const std::string& id) {
    msg::StatusRequest r;
    r.job_id = id;
    auto reply = Call(r);
    if (!reply || !std::holds_alternative<msg::JobsReply>(*reply)) return std::nullopt;
    auto& jobs = std::get<msg::JobsReply>(*reply).jobs;
    if (jobs.empty()) return std::nullopt;
    return jobs[0];
  }

 private:
  std::uint64_t next_id_ = 0;
};

inline msg::Instruction Refresh(const std::string& package, std::uint64_t version, std::vector<std::string> dps) {
  msg::Instruction in;
  in.package = package;
  in.version = version;
  in.source = "/srv/src/" + package + "/" + std::to_string(version);
  in.dps = std::move(dps);
  return in;
}

// A scripted worker: registers, heartbeats while pumped, and hands dispatches to the test.
class TestWorker : public Peer {
 public:
  TestWorker(zmq::context_t& ctx, const std::string& endpoint, std::string name)
      : Peer(ctx, endpoint), name_(std::move(name)) {}

  bool Register(std::vector<std::string> dps, std::uint32_t capacity) {
    dps_ = dps;
    capacity_ = capacity;
    Send(msg::Register{name_, std::move(dps), capacity});
    return PumpUntil([&] { return registered_; }, 10s);
  }

  // Receives for up to `timeout`, heartbeating, until `cond` holds.
  bool PumpUntil(const std::function<bool()>& cond, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (!cond()) {
      if (Clock::now() >= deadline) return false;
      PumpOnce(20ms);
    }
    return true;
  }

  void PumpOnce(std::chrono::milliseconds wait) {
    if (!silent && Clock::now() - last_hb_ > 50ms) {
      Send(msg::Heartbeat{});
      last_hb_ = Clock::now();
    }
    auto e = Recv(wait);
    if (!e) return;
    Handle(std::move(e->body));
  }

  void Result(const msg::Dispatch& d, msg::Outcome outcome, std::vector<std::string> in_use = {}) {
    msg::JobResult r;
    r.job_id = d.job_id;
    r.attempt = d.attempt;
    r.outcome = outcome;
    r.in_use = std::move(in_use);
    Send(r);
  }

  std::vector<msg::Dispatch> dispatches;   // received, not yet taken by the test
  std::vector<msg::CancelJob> cancels;
  std::vector<msg::ResultAck> acks;
  std::vector<msg::ErrorReply> errors;
  int disconnects = 0;
  bool registered_ = false;
  bool silent = false;                      // stop heartbeating (to be declared lost)

 private:
  void Handle(msg::Body b) {
    if (std::holds_alternative<msg::RegisterAck>(b)) registered_ = true;
    if (auto* d = std::get_if<msg::Dispatch>(&b)) dispatches.push_back(*d);
    if (auto* c = std::get_if<msg::CancelJob>(&b)) cancels.push_back(*c);
    if (auto* a = std::get_if<msg::ResultAck>(&b)) acks.push_back(*a);
    if (auto* e = std::get_if<msg::ErrorReply>(&b)) errors.push_back(*e);
    if (std::holds_alternative<msg::Disconnect>(b)) ++disconnects;
  }

  std::string name_;
  std::vector<std::string> dps_;
  std::uint32_t capacity_ = 1;
  Clock::time_point last_hb_{};
};

}  // namespace despool::broker::testing
