// Security tests: key material in a temp dir, a real broker with [security] configured, and
// CURVE peers (DEALER / SUB) with any keys (right, wrong, none). A failed CURVE handshake gives
// no reply at all, so refusals at connection level are asserted as bounded timeouts.
#pragma once

#include <sys/stat.h>

#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "broker/process_harness.h"
#include "despool/common/curve.h"
#include "despool/common/zmq_wait.h"

namespace despool::security_testing {

using namespace despool::broker::testing;
using namespace std::chrono_literals;

inline CurveKeyPair NewPair() {
  auto p = GenerateCurveKeyPair();
  EXPECT_TRUE(p.ok());
  return p.ok() ? *p : CurveKeyPair{};
}

// keys/broker.key (0600), keys/authorized/<id>.toml per client, and the broker config.
class KeyRing {
 public:
  explicit KeyRing(const TempDir& dir) : dir_(dir.path() + "/keys"), authorized_(dir_ + "/authorized") {
    std::filesystem::create_directories(authorized_);
    server = NewPair();
    EXPECT_TRUE(WriteCurveKeyFiles(dir_ + "/broker", server).ok());
  }

  // Adds an authorized key `id` with `role` and extra TOML lines (grants); returns its pair.
  CurveKeyPair Authorize(const std::string& id, const std::string& role, const std::string& grants = "") {
    CurveKeyPair p = NewPair();
    std::ofstream(authorized_ + "/" + id + ".toml")
        << "public = \"" << p.public_key << "\"\nrole = \"" << role << "\"\n" << grants << "\n";
    return p;
  }
  void Remove(const std::string& id) { std::filesystem::remove(authorized_ + "/" + id + ".toml"); }

  std::string SecretKeyPath() const { return dir_ + "/broker.key"; }
  std::string PublicKeyPath() const { return dir_ + "/broker.pub"; }
  std::string AuthorizedDir() const { return authorized_; }

  // A broker config enabling CURVE (plus `extra` TOML at the end).
  std::string Config(const std::string& extra = "") const {
    return "[security]\ncurve_secret_key = \"" + SecretKeyPath() + "\"\nauthorized_keys_dir = \"" + authorized_ +
           "\"\n" + extra + "\n";
  }

  CurveClientConfig ClientOf(const CurveKeyPair& own) const { return CurveClientConfig{server.public_key, own}; }

  CurveKeyPair server;

 private:
  std::string dir_;
  std::string authorized_;
};

inline void ApplyCurve(zmq::socket_t& s, const std::optional<CurveClientConfig>& curve) {
  if (curve) {
    ASSERT_TRUE(ApplyCurveClient(s.handle(), *curve).ok());
  }
}

// A DEALER that may speak CURVE; without keys it is a plain (NULL mechanism) client.
class CurveClient {
 public:
  CurveClient(zmq::context_t& ctx, const std::string& endpoint, std::optional<CurveClientConfig> curve)
      : sock_(ctx, zmq::socket_type::dealer) {
    sock_.set(zmq::sockopt::linger, 0);
    ApplyCurve(sock_, curve);
    sock_.connect(endpoint);
  }

  // One request and its reply (by id), nullopt after `timeout`.
  std::optional<msg::Body> Call(msg::Body body, std::chrono::milliseconds timeout = 10s) {
    const std::uint64_t id = ++next_id_;
    Send(std::move(body), id);
    return Await(id, timeout);
  }
  void Send(msg::Body body, std::uint64_t id) {
    sock_.send(zmq::buffer(msg::Encode(msg::Envelope{msg::kProtocolVersion, id, std::move(body)})),
               zmq::send_flags::dontwait);
  }
  std::optional<msg::Body> Await(std::uint64_t id, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      auto e = Recv(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
      if (!e) return std::nullopt;
      if (e->request_id == id || id == 0) return std::move(e->body);
    }
  }
  std::optional<msg::Envelope> Recv(std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (WaitReadable(sock_, deadline)) {
      zmq::message_t m;
      if (!sock_.recv(m, zmq::recv_flags::dontwait)) continue;
      auto d = msg::Decode(std::string_view(static_cast<const char*>(m.data()), m.size()), Peer::Limits());
      if (d.ok()) return std::move(d.value());
    }
    return std::nullopt;
  }
  std::uint64_t NextId() { return ++next_id_; }

 private:
  zmq::socket_t sock_;
  std::uint64_t next_id_ = 0;
};

// A SUB socket on the events endpoint.
class CurveSubscriber {
 public:
  CurveSubscriber(zmq::context_t& ctx, const std::string& endpoint, std::optional<CurveClientConfig> curve)
      : sock_(ctx, zmq::socket_type::sub) {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::subscribe, "dp/");
    ApplyCurve(sock_, curve);
    sock_.connect(endpoint);
  }
  // The next event's topic within `timeout`, nullopt when none arrived.
  std::optional<std::string> NextTopic(std::chrono::milliseconds timeout) {
    std::vector<zmq_pollitem_t> items = {{sock_.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, timeout);
    if (!(items[0].revents & ZMQ_POLLIN)) return std::nullopt;
    zmq::message_t topic, body;
    if (!sock_.recv(topic, zmq::recv_flags::dontwait)) return std::nullopt;
    if (topic.more()) (void)sock_.recv(body, zmq::recv_flags::dontwait);
    return topic.to_string();
  }

 private:
  zmq::socket_t sock_;
};

inline const msg::ErrorReply* AsError(const std::optional<msg::Body>& b) {
  return b ? std::get_if<msg::ErrorReply>(&*b) : nullptr;
}
const msg::ErrorReply* AsError(std::optional<msg::Body>&&) = delete;  // would dangle

// Runs a program to completion (stdout+stderr captured), bounded; returns its exit code or -1.
inline int RunProgram(std::vector<std::string> args, std::string* output, std::chrono::milliseconds timeout = 20s) {
  TempDir tmp;
  const std::string out_path = tmp / "out";
  const pid_t pid = ::fork();
  if (pid == 0) testsupport::ExecWithOutputTo(std::move(args), out_path, /*append=*/false);
  if (pid < 0) return -1;
  int status = 0;
  const bool done = WaitFor([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, timeout);
  if (!done) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
  }
  if (output) {
    std::ifstream f(out_path);
    std::stringstream s;
    s << f.rdbuf();
    *output = s.str();
  }
  return done && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace despool::security_testing
