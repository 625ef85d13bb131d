// The broker's security (docs/security.md): CURVE on its three sockets, a ZAP handler that maps
// a client's public key to an authorized key (id, role, grants), per-request authorization,
// the secure-by-default bind policy and the frontend's per-connection rate limit.
//
// Threads: BrokerAuth runs one ZAP handler thread owning the ZAP socket
// (inproc://zeromq.zap.01) in the broker's context. The key table is shared under a mutex;
// the loop thread looks keys up by id (the User-Id ZAP put on every message it delivers).
// Revocation: removing (or renaming away) a key file takes effect at the next handshake and,
// for clients already connected, within about a second (the ZAP thread re-reads the directory
// when its mtime changed, at each handshake and once a second): their next request finds no
// key for their id and gets not-authorized. `revoked` is read at start-up.
#pragma once

#include <zmq.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "despool/common/curve.h"
#include "despool/common/result.h"
#include "despool/messages/types.h"

namespace despool::broker {

// ZAP domains of the three sockets: which roles may connect where.
inline constexpr const char* kZapDomainFrontend = "despool-frontend";  // publisher, subscriber, admin
inline constexpr const char* kZapDomainBackend = "despool-backend";    // worker, admin
inline constexpr const char* kZapDomainEvents = "despool-events";      // publisher, subscriber, admin

bool RoleAllowedInDomain(Role role, std::string_view domain);

struct SecuritySettings {
  std::string curve_secret_key;         // path; empty = no CURVE
  std::string authorized_keys_dir;      // required with CURVE
  std::vector<std::string> revoked;     // key ids or Z85 public keys
  bool insecure = false;                // --insecure: allow non-local binds without CURVE
};

// True for endpoints only this host can reach: ipc://, inproc://, tcp:// on 127.0.0.0/8,
// ::1 or localhost. Everything else (0.0.0.0, *, an interface name, another address) is not.
bool IsLocalEndpoint(const std::string& endpoint);

// The secure-by-default rule: binding a non-local endpoint without CURVE is refused unless
// `insecure`. Returns the endpoints that are exposed without CURVE (for the --insecure
// warning) or kInvalidArgument naming them (callers exit 2).
Result<std::vector<std::string>> CheckBindPolicy(const std::vector<std::string>& endpoints, bool curve,
                                                 bool insecure);

// Authorization decisions: nullopt = allowed, else the refusal, one line naming the key, its
// role and what was refused. `dp_groups`: the broker config's groups (members are granted
// when the group is granted or every member DP is).
using DpGroups = std::map<std::string, std::vector<std::string>>;
std::optional<std::string> AuthorizeFrontend(const KeyGrant& key, const msg::Body& request, const DpGroups& dp_groups);
std::optional<std::string> AuthorizeBackend(const KeyGrant& key, const msg::Body& message);

// The broker's side of CURVE: the server key, the authorized keys and the ZAP handler thread.
class BrokerAuth {
 public:
  // Loads the secret key (mode checked) and the authorized keys, binds the ZAP handler in
  // `context` and starts its thread. Config problems are kInvalidArgument (exit 2).
  static Result<std::unique_ptr<BrokerAuth>> Start(zmq::context_t& context, const SecuritySettings& settings);
  ~BrokerAuth();  // stops and joins the ZAP thread
  BrokerAuth(const BrokerAuth&) = delete;
  BrokerAuth& operator=(const BrokerAuth&) = delete;

  // Makes `socket` a CURVE server authenticated in `domain` (before bind).
  void ApplyServer(zmq::socket_t& socket, const char* domain) const;

  // The authorized key with this id (the User-Id of a message), or null when it is unknown or
  // was revoked since the client connected.
  std::shared_ptr<const KeyGrant> Find(const std::string& key_id) const;

  std::size_t key_count() const;
  const std::string& public_key() const;

  class Impl;

 private:
  explicit BrokerAuth(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Per-connection token bucket (frontend routing ids): `rate` requests per second, bursts up to
// `burst`. rate 0 = unlimited. Idle buckets are forgotten, so the table stays bounded by the
// connections active within about burst/rate seconds.
class RateLimiter {
 public:
  RateLimiter(double rate, double burst) : rate_(rate), burst_(burst < 1 ? 1 : burst) {}
  bool enabled() const { return rate_ > 0; }
  // Takes one token for `peer` at `now_ms`; false when its bucket is empty.
  bool Allow(const std::string& peer, std::int64_t now_ms);
  std::size_t tracked() const { return buckets_.size(); }

 private:
  struct Bucket {
    double tokens;
    std::int64_t at_ms;
  };
  void Prune(std::int64_t now_ms);
  double rate_;
  double burst_;
  std::unordered_map<std::string, Bucket> buckets_;
  std::int64_t last_prune_ms_ = 0;
  std::size_t prune_at_size_ = 4096;
};

}  // namespace despool::broker
