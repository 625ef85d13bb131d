// The client side of the broker's frontend and events sockets: what despoolctl, tests and
// benchmarks use to talk to a broker.
//
// Framing (messages/PROTOCOL.md): a DEALER sends one frame [envelope] to the frontend ROUTER
// and gets one frame [envelope] back carrying the same request id. Events arrive on a SUB
// socket as [topic][envelope] with topics "dp/<dp>/pkg/<package>/".
//
// Neither class is thread-safe: use one per thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "despool/common/curve.h"
#include "despool/common/result.h"
#include "despool/messages/types.h"

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq

namespace despool::ctl {

using Millis = std::chrono::milliseconds;

inline constexpr const char* kDefaultFrontend = "tcp://127.0.0.1:7400";
inline constexpr const char* kDefaultEvents = "tcp://127.0.0.1:7402";
inline constexpr Millis kDefaultTimeout{10000};

// Maps an error reply to an Error whose message carries the broker's words, e.g.
// "broker refused status: not-found: unknown job 'x'".
Error ErrorFromReply(const msg::ErrorReply& reply, const char* request_type);

// A connection to the broker's frontend.
//
// Every request is bounded by a timeout: an unreachable or silent broker yields kUnavailable
// naming the endpoint, never a hang. After a timeout the socket is replaced, so a late reply
// to an abandoned request can never be taken for the answer to the next one.
class Client {
 public:
  // Uses its own ZeroMQ context.
  Client();
  // Shares `context`, which must outlive the client.
  explicit Client(zmq::context_t& context);
  ~Client();
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Connects (lazily: ZeroMQ connects in the background) to a frontend endpoint. Fails only on
  // a malformed endpoint.
  despool::Status Connect(const std::string& endpoint);
  const std::string& endpoint() const { return endpoint_; }

  // CURVE keys for the frontend socket and the followers' SUB sockets (docs/security.md); set
  // before Connect. A failed handshake looks like a silent broker: requests time out.
  void set_curve(CurveClientConfig curve) { curve_ = std::move(curve); }
  const CurveClientConfig& curve() const { return curve_; }

  // The timeout used by the typed helpers when none is given (default 10 s).
  void set_default_timeout(Millis t) { default_timeout_ = t; }
  Millis default_timeout() const { return default_timeout_; }

  // Sends one request and waits for the reply with the same request id. Error replies are
  // returned as envelopes (body ErrorReply); only transport failures are Errors.
  Result<msg::Envelope> Request(msg::Body body, Millis timeout);
  // Sends raw bytes as one frame and returns the first frame received (for hostile-input tests).
  Result<std::string> RequestRaw(const std::string& frame, Millis timeout);

  // Typed helpers: an error reply becomes an Error (ErrorFromReply), a reply of an unexpected
  // type kCorruption. A timeout of zero means default_timeout().
  Result<msg::SubmitReply> Submit(const msg::SubmitRequest& req, Millis timeout = Millis{0});
  Result<std::vector<msg::JobInfo>> Status(const msg::StatusRequest& req, Millis timeout = Millis{0});
  Result<std::vector<msg::WorkerInfo>> Workers(Millis timeout = Millis{0});
  Result<std::vector<msg::JobInfo>> Dead(std::uint32_t limit = 1000, Millis timeout = Millis{0});
  Result<std::vector<msg::JobInfo>> Retry(const std::string& job_id, Millis timeout = Millis{0});
  Result<std::vector<msg::JobInfo>> Cancel(const std::string& job_id, Millis timeout = Millis{0});
  Result<msg::StatsReply> Stats(Millis timeout = Millis{0});
  Result<std::vector<msg::JobInfo>> Verify(const msg::VerifyRequest& req, Millis timeout = Millis{0});
  Result<msg::EventsReply> EventsSince(const msg::EventsSinceRequest& req, Millis timeout = Millis{0});

  zmq::context_t& context() { return *context_; }

 private:
  Result<msg::Envelope> Call(msg::Body body, Millis timeout, const char* what);
  despool::Status ResetSocket();

  std::unique_ptr<zmq::context_t> owned_context_;
  zmq::context_t* context_ = nullptr;
  std::unique_ptr<zmq::socket_t> socket_;
  std::string endpoint_;
  Millis default_timeout_ = kDefaultTimeout;
  std::uint64_t next_request_id_ = 1;
  CurveClientConfig curve_;
};

// Event topic prefix for a filter: "dp/<dp>/pkg/<package>/", "dp/<dp>/" or "dp/" (package
// without DP cannot be expressed as a prefix; the follower filters those locally).
std::string TopicPrefix(const std::optional<std::string>& dp, const std::optional<std::string>& package);

struct FollowOptions {
  std::string events_endpoint = kDefaultEvents;
  std::optional<std::string> dp;
  std::optional<std::string> package;
  // Replay stored events with seq > since first; nullopt = only events after Start().
  std::optional<std::uint64_t> since;
  // While no live event has arrived yet, or after this long without one, ask the broker for
  // stored events again (covers the SUB slow joiner and events lost across a reconnect).
  Millis resync_interval{2000};
};

// Follows the broker's events for a DP/package filter without gaps or duplicates:
// subscribe first, then fetch stored events over the frontend (events-since), then deliver
// live events, dropping state events whose seq was already delivered. Progress events
// (seq 0) are live only and never de-duplicated.
class EventFollower {
 public:
  // `client` must outlive the follower and is used for events-since requests.
  EventFollower(Client& client, FollowOptions options);
  ~EventFollower();
  EventFollower(const EventFollower&) = delete;
  EventFollower& operator=(const EventFollower&) = delete;

  // Subscribes and fetches stored events (or, without `since`, the current last seq).
  // A `since` older than the broker's retention window is kFailedPrecondition naming the
  // oldest available seq.
  despool::Status Start();

  // The next event matching the filter, nullopt when `timeout` passed without one.
  Result<std::optional<msg::Event>> Next(Millis timeout);

  // Highest state-event seq delivered (or the baseline after Start()).
  std::uint64_t last_seq() const { return last_seq_; }

 private:
  Result<std::optional<msg::Event>> NextImpl(Millis timeout);
  despool::Status FetchStored();
  bool Matches(const msg::Event& e) const;
  void Enqueue(msg::Event e);

  Client& client_;
  FollowOptions options_;
  std::unique_ptr<zmq::socket_t> sub_;
  std::deque<msg::Event> ready_;
  std::uint64_t last_seq_ = 0;
  bool live_confirmed_ = false;
  std::chrono::steady_clock::time_point last_activity_;
};

}  // namespace despool::ctl
