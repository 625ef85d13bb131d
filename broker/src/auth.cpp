#include "despool/broker/auth.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <thread>

#include "despool/common/logging.h"

namespace despool::broker {
namespace {

std::string Who(const KeyGrant& key) { return "key '" + key.id + "' (" + ToString(key.role) + ")"; }

bool IsFrontendQuery(const msg::Body& b) {
  return std::holds_alternative<msg::StatusRequest>(b) || std::holds_alternative<msg::WorkersRequest>(b) ||
         std::holds_alternative<msg::DeadRequest>(b) || std::holds_alternative<msg::StatsRequest>(b) ||
         std::holds_alternative<msg::EventsSinceRequest>(b);
}

bool GroupGranted(const KeyGrant& key, const std::string& group, const DpGroups& dp_groups) {
  if (AnyGlobMatches(key.dp_groups, group)) return true;
  auto it = dp_groups.find(group);
  if (it == dp_groups.end() || it->second.empty()) return false;
  return std::all_of(it->second.begin(), it->second.end(),
                     [&](const std::string& dp) { return AnyGlobMatches(key.dps, dp); });
}

std::optional<std::string> CheckPublish(const KeyGrant& key, const std::string& what, const std::string& package,
                                        const std::vector<std::string>& dps, const std::vector<std::string>& groups,
                                        const DpGroups& dp_groups) {
  if (!AnyGlobMatches(key.packages, package)) {
    return Who(key) + " may not " + what + (package.empty() ? " every package" : " package '" + package + "'");
  }
  for (const auto& dp : dps) {
    if (!AnyGlobMatches(key.dps, dp)) return Who(key) + " may not " + what + " on DP '" + dp + "'";
  }
  for (const auto& g : groups) {
    if (!GroupGranted(key, g, dp_groups)) return Who(key) + " may not " + what + " on DP group '" + g + "'";
  }
  return std::nullopt;
}

// A ZAP reply (RFC 27): version, request id, status code, status text, user id, metadata.
void SendZapReply(zmq::socket_t& sock, const std::string& version, const std::string& request_id, const char* code,
                  const std::string& text, const std::string& user_id) {
  sock.send(zmq::buffer(version), zmq::send_flags::sndmore);
  sock.send(zmq::buffer(request_id), zmq::send_flags::sndmore);
  sock.send(zmq::buffer(std::string(code)), zmq::send_flags::sndmore);
  sock.send(zmq::buffer(text), zmq::send_flags::sndmore);
  sock.send(zmq::buffer(user_id), zmq::send_flags::sndmore);
  sock.send(zmq::buffer(std::string()), zmq::send_flags::none);
}

std::string KeyPrefix(const std::string& binary) {
  const std::string z = Z85Encode(binary);
  return z.empty() ? "?" : z.substr(0, 8) + "...";
}

}  // namespace

bool RoleAllowedInDomain(Role role, std::string_view domain) {
  if (role == Role::kAdmin) return true;
  if (domain == kZapDomainFrontend || domain == kZapDomainEvents) {
    return role == Role::kPublisher || role == Role::kSubscriber;
  }
  if (domain == kZapDomainBackend) return role == Role::kWorker;
  return false;
}

bool IsLocalEndpoint(const std::string& endpoint) {
  if (endpoint.rfind("ipc://", 0) == 0 || endpoint.rfind("inproc://", 0) == 0) return true;
  if (endpoint.rfind("tcp://", 0) != 0) return false;
  std::string rest = endpoint.substr(6);
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = rest.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost" || host == "::1") return true;
  in_addr a4{};
  if (::inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  return false;
}

Result<std::vector<std::string>> CheckBindPolicy(const std::vector<std::string>& endpoints, bool curve,
                                                 bool insecure) {
  std::vector<std::string> exposed;
  if (curve) return exposed;
  for (const auto& ep : endpoints) {
    if (!IsLocalEndpoint(ep)) exposed.push_back(ep);
  }
  if (!exposed.empty() && !insecure) {
    std::string list;
    for (const auto& ep : exposed) list += (list.empty() ? "" : ", ") + ep;
    return MakeError(ErrorCode::kInvalidArgument,
                     "refusing to bind " + list +
                         " without CURVE: anyone who can reach it could publish to every DP. Configure "
                         "[security] curve_secret_key and authorized_keys_dir (docs/security.md), bind to "
                         "loopback/ipc, or pass --insecure");
  }
  return exposed;
}

std::optional<std::string> AuthorizeFrontend(const KeyGrant& key, const msg::Body& b, const DpGroups& dp_groups) {
  if (key.role == Role::kAdmin) return std::nullopt;
  const char* type = msg::TypeName(b);
  if (IsFrontendQuery(b)) {
    if (key.role == Role::kWorker) return Who(key) + " may not send '" + type + "' to the frontend";
    return std::nullopt;
  }
  if (key.role != Role::kPublisher) return Who(key) + " may not send '" + type + "': read-only key";
  if (auto* s = std::get_if<msg::SubmitRequest>(&b)) {
    for (std::size_t i = 0; i < s->instructions.size(); ++i) {
      const auto& in = s->instructions[i];
      const std::string what = in.kind == msg::JobKind::kVerify ? "verify" : "publish";
      if (auto refused = CheckPublish(key, what, in.package, in.dps, in.dp_groups, dp_groups)) {
        return *refused + " (submit: instructions[" + std::to_string(i) + "])";
      }
    }
    return std::nullopt;
  }
  if (auto* v = std::get_if<msg::VerifyRequest>(&b)) {
    return CheckPublish(key, "verify", v->package.value_or(""), {v->dp}, {}, dp_groups);
  }
  // retry, cancel and anything else that changes the queue: operators only.
  return Who(key) + " may not send '" + type + "': admin only";
}

std::optional<std::string> AuthorizeBackend(const KeyGrant& key, const msg::Body& b) {
  if (key.role == Role::kAdmin) return std::nullopt;
  if (key.role != Role::kWorker) return Who(key) + " may not talk to the backend";
  if (auto* r = std::get_if<msg::Register>(&b)) {
    for (const auto& dp : r->dps) {
      if (!AnyGlobMatches(key.dps, dp)) return Who(key) + " may not serve DP '" + dp + "'";
    }
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------

class BrokerAuth::Impl {
 public:
  Impl(zmq::context_t& ctx, SecuritySettings settings, CurveKeyPair server)
      : settings_(std::move(settings)), server_(std::move(server)), zap_(ctx, zmq::socket_type::rep),
        log_(GetLogger("broker")) {}

  ~Impl() {
    if (thread_.joinable()) {
      const std::uint64_t one = 1;
      if (::write(stop_fd_, &one, sizeof one) < 0) log_->error("cannot stop the ZAP thread");
      thread_.join();
    }
    if (stop_fd_ >= 0) ::close(stop_fd_);
  }

  Status Start() {
    DESPOOL_RETURN_IF_ERROR(Reload(true));
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (stop_fd_ < 0) return SysError("eventfd", errno);
    try {
      zap_.set(zmq::sockopt::linger, 0);
      zap_.bind("inproc://zeromq.zap.01");
    } catch (const zmq::error_t& e) {
      return MakeError(ErrorCode::kInternal, std::string("ZAP handler bind: ") + e.what());
    }
    thread_ = std::thread([this] { Loop(); });
    return Status::Ok();
  }

  std::shared_ptr<const KeyGrant> Find(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_id_.find(id);
    return it == by_id_.end() ? nullptr : it->second;
  }

  std::size_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return by_id_.size();
  }

  const CurveKeyPair& server() const { return server_; }

 private:
  // Re-reads the directory when its mtime changed (a file added, removed or renamed). A failed
  // re-read keeps the previous table: a broken edit must not lock every client out.
  Status Reload(bool first) {
    struct stat st {};
    if (::stat(settings_.authorized_keys_dir.c_str(), &st) != 0) {
      if (first) return SysError("authorized_keys_dir '" + settings_.authorized_keys_dir + "'", errno);
      return Status::Ok();
    }
    const std::int64_t mtime = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    if (!first && mtime == dir_mtime_ns_) return Status::Ok();
    auto keys = LoadAuthorizedKeys(settings_.authorized_keys_dir, settings_.revoked);
    if (!keys.ok()) {
      if (first) return keys.take_error();
      log_->error("authorized keys not reloaded, keeping the previous ones error={}", LogQuote(keys.error().message));
      dir_mtime_ns_ = mtime;
      return Status::Ok();
    }
    std::unordered_map<std::string, std::shared_ptr<const KeyGrant>> by_id, by_key;
    for (auto& k : *keys) {
      auto shared = std::make_shared<const KeyGrant>(std::move(k));
      by_key[Z85Decode(shared->public_key)] = shared;
      by_id[shared->id] = shared;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      by_id_ = std::move(by_id);
      by_key_ = std::move(by_key);
      log_->info("authorized keys loaded dir={} keys={} revoked={}", LogQuote(settings_.authorized_keys_dir),
                 by_id_.size(), settings_.revoked.size());
    }
    dir_mtime_ns_ = mtime;
    return Status::Ok();
  }

  void Loop() {
    for (;;) {
      zmq_pollitem_t items[] = {{zap_.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, stop_fd_, ZMQ_POLLIN, 0}};
      // Wakes every second to notice a changed key directory even without handshakes, so a
      // removed key's open connections are refused within about a second.
      const int ready = zmq_poll(items, 2, 1000);
      if (ready == 0) {
        if (Status st = Reload(false); !st.ok()) log_->error("key reload error={}", LogQuote(st.error().message));
        continue;
      }
      if (ready < 0) {
        if (zmq_errno() == EINTR) continue;
        if (zmq_errno() != ETERM) log_->error("ZAP poll failed error={}", LogQuote(zmq_strerror(zmq_errno())));
        break;
      }
      if (items[1].revents & ZMQ_POLLIN) break;
      if (items[0].revents & ZMQ_POLLIN) {
        try {
          HandleOne();
        } catch (const zmq::error_t& e) {
          if (e.num() == ETERM) break;
          if (e.num() != EINTR) log_->error("ZAP handler error={}", LogQuote(e.what()));
        }
      }
    }
    zap_.close();
  }

  void HandleOne() {
    std::vector<std::string> f;
    for (;;) {
      zmq::message_t part;
      if (!zap_.recv(part, zmq::recv_flags::none)) return;
      if (f.size() < 16) f.push_back(part.to_string());
      if (!part.more()) break;
    }
    // version, request id, domain, address, routing id, mechanism, credentials...
    if (f.size() < 6) {
      log_->warn("malformed ZAP request frames={}", f.size());
      if (f.size() >= 2) SendZapReply(zap_, f[0], f[1], "500", "malformed request", "");
      return;
    }
    const std::string& domain = f[2];
    const std::string& address = f[3];
    const std::string& mechanism = f[5];
    if (Status st = Reload(false); !st.ok()) log_->error("key reload error={}", LogQuote(st.error().message));
    if (f[0] != "1.0" || mechanism != "CURVE" || f.size() < 7 || f[6].size() != 32) {
      log_->warn("connection refused: not CURVE domain={} address={} mechanism={}", domain, address,
                 LogQuote(mechanism));
      SendZapReply(zap_, f[0], f[1], "400", "CURVE required", "");
      return;
    }
    std::shared_ptr<const KeyGrant> key;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = by_key_.find(f[6]);
      if (it != by_key_.end()) key = it->second;
    }
    if (!key) {
      log_->warn("connection refused: unknown or revoked key domain={} address={} public_key={}", domain, address,
                 KeyPrefix(f[6]));
      SendZapReply(zap_, f[0], f[1], "400", "unknown key", "");
      return;
    }
    if (!RoleAllowedInDomain(key->role, domain)) {
      log_->warn("connection refused: role not allowed here key={} role={} domain={} address={}", key->id,
                 ToString(key->role), domain, address);
      SendZapReply(zap_, f[0], f[1], "400", "role not allowed on this socket", "");
      return;
    }
    log_->debug("connection authenticated key={} role={} domain={} address={}", key->id, ToString(key->role), domain,
                address);
    SendZapReply(zap_, f[0], f[1], "200", "OK", key->id);
  }

  SecuritySettings settings_;
  CurveKeyPair server_;
  zmq::socket_t zap_;
  std::shared_ptr<spdlog::logger> log_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const KeyGrant>> by_id_;   // guarded by mu_
  std::unordered_map<std::string, std::shared_ptr<const KeyGrant>> by_key_;  // binary key; guarded by mu_
  std::int64_t dir_mtime_ns_ = 0;  // ZAP thread only (after Start)
  int stop_fd_ = -1;
  std::thread thread_;
};

Result<std::unique_ptr<BrokerAuth>> BrokerAuth::Start(zmq::context_t& context, const SecuritySettings& settings) {
  if (settings.authorized_keys_dir.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "security.curve_secret_key needs security.authorized_keys_dir");
  }
  if (zmq_has("curve") != 1) return MakeError(ErrorCode::kInvalidArgument, "this libzmq has no CURVE support");
  DESPOOL_ASSIGN_OR_RETURN(auto server, LoadSecretKeyFile(settings.curve_secret_key));
  auto impl = std::make_unique<Impl>(context, settings, std::move(server));
  DESPOOL_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<BrokerAuth>(new BrokerAuth(std::move(impl)));
}

BrokerAuth::BrokerAuth(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BrokerAuth::~BrokerAuth() = default;

void BrokerAuth::ApplyServer(zmq::socket_t& socket, const char* domain) const {
  const std::string secret = Z85Decode(impl_->server().secret_key);
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, zmq::const_buffer(secret.data(), secret.size()));
  socket.set(zmq::sockopt::zap_domain, domain);
}

std::shared_ptr<const KeyGrant> BrokerAuth::Find(const std::string& key_id) const { return impl_->Find(key_id); }
std::size_t BrokerAuth::key_count() const { return impl_->count(); }
const std::string& BrokerAuth::public_key() const { return impl_->server().public_key; }

// ---------------------------------------------------------------------------------------------

bool RateLimiter::Allow(const std::string& peer, std::int64_t now_ms) {
  if (!enabled()) return true;
  Prune(now_ms);
  auto [it, fresh] = buckets_.try_emplace(peer, Bucket{burst_, now_ms});
  Bucket& b = it->second;
  if (!fresh && now_ms > b.at_ms) {
    b.tokens = std::min(burst_, b.tokens + rate_ * static_cast<double>(now_ms - b.at_ms) / 1000.0);
    b.at_ms = now_ms;
  }
  if (b.tokens < 1.0) return false;
  b.tokens -= 1.0;
  return true;
}

void RateLimiter::Prune(std::int64_t now_ms) {
  // A bucket that would be full again carries no state: forget it (bounded table).
  const auto refill_ms = static_cast<std::int64_t>(1000.0 * burst_ / rate_) + 1;
  if (now_ms - last_prune_ms_ < std::max<std::int64_t>(refill_ms, 1000) && buckets_.size() < prune_at_size_) return;
  last_prune_ms_ = now_ms;
  for (auto it = buckets_.begin(); it != buckets_.end();) {
    it = now_ms - it->second.at_ms >= refill_ms ? buckets_.erase(it) : std::next(it);
  }
  // Many live connections: prune again only once the table doubled (amortised O(1)).
  prune_at_size_ = std::max<std::size_t>(4096, 2 * buckets_.size());
}

}  // namespace despool::broker
