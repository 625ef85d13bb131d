#include "despool/ctl/client.h"

#include <cerrno>
#include <limits>
#include <string_view>
#include <utility>
#include <zmq.hpp>

#include "despool/common/zmq_wait.h"
#include "despool/messages/codec.h"
#include "despool/messages/topics.h"

namespace despool::ctl {
namespace {

using Clock = std::chrono::steady_clock;

// Replies come from the broker we chose to talk to: decode them with limits large enough for
// `status --limit 0` on a big queue, but still bounded.
msg::DecodeLimits ReplyLimits() {
  msg::DecodeLimits limits;
  limits.max_frame_bytes = std::size_t{512} << 20;
  limits.max_array = 10'000'000;
  return limits;
}

std::string FormatMillis(Millis t) {
  const auto ms = t.count();
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

Error Unavailable(const std::string& endpoint, Millis timeout) {
  return MakeError(ErrorCode::kUnavailable,
                   "broker " + endpoint + " did not answer within " + FormatMillis(timeout) +
                       " (is despool-broker running and listening there?)");
}

ErrorCode CodeFor(msg::ErrorKind kind) {
  switch (kind) {
    case msg::ErrorKind::kNotFound: return ErrorCode::kNotFound;
    case msg::ErrorKind::kNotAuthorized: return ErrorCode::kPermissionDenied;
    case msg::ErrorKind::kConflict: return ErrorCode::kFailedPrecondition;
    case msg::ErrorKind::kUnavailable: return ErrorCode::kUnavailable;
    case msg::ErrorKind::kTooLarge: return ErrorCode::kResourceExhausted;
    case msg::ErrorKind::kInternal: return ErrorCode::kInternal;
    default: return ErrorCode::kInvalidArgument;
  }
}

template <typename T>
Result<T> Expect(Result<msg::Envelope> r, const char* what) {
  if (!r.ok()) return r.take_error();
  if (auto* v = std::get_if<T>(&r->body)) return std::move(*v);
  return MakeError(ErrorCode::kCorruption, std::string("unexpected reply to ") + what + ": " +
                                               msg::TypeName(r->body));
}

}  // namespace

Error ErrorFromReply(const msg::ErrorReply& reply, const char* request_type) {
  return MakeError(CodeFor(reply.kind), std::string("broker refused ") + request_type + ": " +
                                            msg::ToString(reply.kind) + ": " + reply.message);
}

Client::Client() : owned_context_(std::make_unique<zmq::context_t>(1)), context_(owned_context_.get()) {}
Client::Client(zmq::context_t& context) : context_(&context) {}
Client::~Client() = default;
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

despool::Status Client::Connect(const std::string& endpoint) {
  endpoint_ = endpoint;
  return ResetSocket();
}

despool::Status Client::ResetSocket() {
  socket_.reset();
  try {
    auto s = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::dealer);
    s->set(zmq::sockopt::linger, 0);
    if (auto st = ApplyCurveClient(s->handle(), curve_); !st.ok()) return st;
    s->connect(endpoint_);
    socket_ = std::move(s);
  } catch (const zmq::error_t& e) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot connect to broker endpoint '" + endpoint_ + "': " + e.what());
  }
  return {};
}

Result<std::string> Client::RequestRaw(const std::string& frame, Millis timeout) {
  if (!socket_) {
    if (endpoint_.empty()) return MakeError(ErrorCode::kFailedPrecondition, "client is not connected");
    DESPOOL_RETURN_IF_ERROR(ResetSocket());
  }
  const auto deadline = Clock::now() + timeout;
  try {
    // A DEALER queues on a pipe created at connect time; the send timeout only matters when
    // that queue is full.
    socket_->set(zmq::sockopt::sndtimeo, static_cast<int>(std::max<Millis::rep>(timeout.count(), 0)));
    if (!socket_->send(zmq::buffer(frame), zmq::send_flags::none)) {
      (void)ResetSocket();
      return Unavailable(endpoint_, timeout);
    }
    if (!WaitReadable(*socket_, deadline)) {
      (void)ResetSocket();
      return Unavailable(endpoint_, timeout);
    }
    zmq::message_t reply;
    if (!socket_->recv(reply, zmq::recv_flags::dontwait)) {
      (void)ResetSocket();
      return Unavailable(endpoint_, timeout);
    }
    return reply.to_string();
  } catch (const zmq::error_t& e) {
    (void)ResetSocket();
    return MakeError(ErrorCode::kUnavailable, "broker " + endpoint_ + ": " + e.what());
  }
}

Result<msg::Envelope> Client::Request(msg::Body body, Millis timeout) {
  if (!socket_) {
    if (endpoint_.empty()) return MakeError(ErrorCode::kFailedPrecondition, "client is not connected");
    DESPOOL_RETURN_IF_ERROR(ResetSocket());
  }
  msg::Envelope request;
  request.request_id = next_request_id_++;
  request.body = std::move(body);
  const std::string frame = msg::Encode(request);
  const auto deadline = Clock::now() + timeout;
  const auto limits = ReplyLimits();
  try {
    socket_->set(zmq::sockopt::sndtimeo, static_cast<int>(std::max<Millis::rep>(timeout.count(), 0)));
    if (!socket_->send(zmq::buffer(frame), zmq::send_flags::none)) {
      (void)ResetSocket();
      return Unavailable(endpoint_, timeout);
    }
    for (;;) {
      if (!WaitReadable(*socket_, deadline)) {
        (void)ResetSocket();
        return Unavailable(endpoint_, timeout);
      }
      zmq::message_t reply;
      if (!socket_->recv(reply, zmq::recv_flags::dontwait)) continue;
      // Drop any further frames of a multi-frame message: the protocol has one frame.
      while (socket_->get(zmq::sockopt::rcvmore)) {
        zmq::message_t extra;
        (void)socket_->recv(extra, zmq::recv_flags::dontwait);
      }
      auto decoded = msg::Decode(std::string_view(static_cast<const char*>(reply.data()), reply.size()), limits);
      if (!decoded.ok()) {
        if (decoded.error().request_id == request.request_id) {
          return MakeError(ErrorCode::kCorruption,
                           "broker " + endpoint_ + " sent an unreadable reply: " + decoded.error().message);
        }
        continue;  // not ours (or unreadable and unattributable): keep waiting
      }
      if (decoded.value().request_id != request.request_id) continue;  // a stale reply
      return std::move(decoded.value());
    }
  } catch (const zmq::error_t& e) {
    (void)ResetSocket();
    return MakeError(ErrorCode::kUnavailable, "broker " + endpoint_ + ": " + e.what());
  }
}

Result<msg::Envelope> Client::Call(msg::Body body, Millis timeout, const char* what) {
  if (timeout.count() <= 0) timeout = default_timeout_;
  auto r = Request(std::move(body), timeout);
  if (!r.ok()) return r;
  if (auto* err = std::get_if<msg::ErrorReply>(&r->body)) return ErrorFromReply(*err, what);
  return r;
}

Result<msg::SubmitReply> Client::Submit(const msg::SubmitRequest& req, Millis timeout) {
  return Expect<msg::SubmitReply>(Call(req, timeout, "submit"), "submit");
}

Result<std::vector<msg::JobInfo>> Client::Status(const msg::StatusRequest& req, Millis timeout) {
  auto r = Expect<msg::JobsReply>(Call(req, timeout, "status"), "status");
  if (!r.ok()) return r.take_error();
  return std::move(r->jobs);
}

Result<std::vector<msg::WorkerInfo>> Client::Workers(Millis timeout) {
  auto r = Expect<msg::WorkersReply>(Call(msg::WorkersRequest{}, timeout, "workers"), "workers");
  if (!r.ok()) return r.take_error();
  return std::move(r->workers);
}

Result<std::vector<msg::JobInfo>> Client::Dead(std::uint32_t limit, Millis timeout) {
  msg::DeadRequest req;
  req.limit = limit;
  auto r = Expect<msg::JobsReply>(Call(req, timeout, "dead"), "dead");
  if (!r.ok()) return r.take_error();
  return std::move(r->jobs);
}

Result<std::vector<msg::JobInfo>> Client::Retry(const std::string& job_id, Millis timeout) {
  auto r = Expect<msg::JobsReply>(Call(msg::RetryRequest{job_id}, timeout, "retry"), "retry");
  if (!r.ok()) return r.take_error();
  return std::move(r->jobs);
}

Result<std::vector<msg::JobInfo>> Client::Cancel(const std::string& job_id, Millis timeout) {
  auto r = Expect<msg::JobsReply>(Call(msg::CancelRequest{job_id}, timeout, "cancel"), "cancel");
  if (!r.ok()) return r.take_error();
  return std::move(r->jobs);
}

Result<msg::StatsReply> Client::Stats(Millis timeout) {
  return Expect<msg::StatsReply>(Call(msg::StatsRequest{}, timeout, "stats"), "stats");
}

Result<std::vector<msg::JobInfo>> Client::Verify(const msg::VerifyRequest& req, Millis timeout) {
  auto r = Expect<msg::JobsReply>(Call(req, timeout, "verify"), "verify");
  if (!r.ok()) return r.take_error();
  return std::move(r->jobs);
}

Result<msg::EventsReply> Client::EventsSince(const msg::EventsSinceRequest& req, Millis timeout) {
  return Expect<msg::EventsReply>(Call(req, timeout, "events-since"), "events-since");
}

// ---------------------------------------------------------------------------------------------

std::string TopicPrefix(const std::optional<std::string>& dp, const std::optional<std::string>& package) {
  if (!dp) return std::string(msg::kTopicRoot);
  if (!package) return msg::DpPrefix(*dp);
  return msg::TopicFor(*dp, *package);
}

EventFollower::EventFollower(Client& client, FollowOptions options)
    : client_(client), options_(std::move(options)) {}

EventFollower::~EventFollower() = default;

bool EventFollower::Matches(const msg::Event& e) const {
  if (options_.dp && e.job.dp != *options_.dp) return false;
  if (options_.package && e.job.package != *options_.package) return false;
  return true;
}

void EventFollower::Enqueue(msg::Event e) {
  if (!Matches(e)) return;
  if (e.kind == msg::EventKind::kState || e.seq != 0) {
    if (e.seq <= last_seq_) return;  // already delivered (stored replay vs. live)
    last_seq_ = e.seq;
  }
  ready_.push_back(std::move(e));
}

despool::Status EventFollower::Start() {
  try {
    sub_ = std::make_unique<zmq::socket_t>(client_.context(), zmq::socket_type::sub);
    sub_->set(zmq::sockopt::linger, 0);
    sub_->set(zmq::sockopt::subscribe, TopicPrefix(options_.dp, options_.package));
    if (auto st = ApplyCurveClient(sub_->handle(), client_.curve()); !st.ok()) {
      sub_.reset();
      return st;
    }
    sub_->connect(options_.events_endpoint);
  } catch (const zmq::error_t& e) {
    sub_.reset();
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot subscribe to events endpoint '" + options_.events_endpoint + "': " + e.what());
  }
  last_activity_ = Clock::now();
  if (options_.since) {
    last_seq_ = *options_.since;
    msg::EventsSinceRequest probe;
    probe.since = *options_.since;
    probe.dp = options_.dp;
    probe.package = options_.package;
    probe.limit = 1;
    auto r = client_.EventsSince(probe);
    if (!r.ok()) return r.take_error();
    if (r->oldest_seq > 0 && *options_.since + 1 < r->oldest_seq) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "events after seq " + std::to_string(*options_.since) +
                           " are no longer retained; the oldest available is seq " +
                           std::to_string(r->oldest_seq) + " (use --since " +
                           std::to_string(r->oldest_seq - 1) + " or later)");
    }
    return FetchStored();
  }
  // Only what happens from now on: the baseline is the broker's newest stored seq.
  msg::EventsSinceRequest probe;
  probe.since = 0;
  probe.limit = 1;
  auto r = client_.EventsSince(probe);
  if (!r.ok()) return r.take_error();
  last_seq_ = r->last_seq;
  return {};
}

despool::Status EventFollower::FetchStored() {
  for (;;) {
    msg::EventsSinceRequest req;
    req.since = last_seq_;
    req.dp = options_.dp;
    req.package = options_.package;
    auto r = client_.EventsSince(req);
    if (!r.ok()) return r.take_error();
    const std::size_t n = r->events.size();
    const std::uint64_t before = last_seq_;
    std::uint64_t highest = last_seq_;
    for (auto& e : r->events) {
      highest = std::max(highest, e.seq);
      Enqueue(std::move(e));
    }
    // Events for other DPs advance the broker's seq too: nothing more to fetch up to last_seq.
    if (n < req.limit || highest <= before || highest >= r->last_seq) {
      if (r->last_seq > last_seq_ && n < req.limit) last_seq_ = r->last_seq;
      return {};
    }
    last_seq_ = std::max(last_seq_, highest);
  }
}

Result<std::optional<msg::Event>> EventFollower::Next(Millis timeout) {
  if (!sub_) return MakeError(ErrorCode::kFailedPrecondition, "event follower not started");
  try {
    return NextImpl(timeout);
  } catch (const zmq::error_t& e) {
    return MakeError(ErrorCode::kUnavailable, "events " + options_.events_endpoint + ": " + e.what());
  }
}

Result<std::optional<msg::Event>> EventFollower::NextImpl(Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (!ready_.empty()) {
      msg::Event e = std::move(ready_.front());
      ready_.pop_front();
      return std::optional<msg::Event>(std::move(e));
    }
    const auto now = Clock::now();
    const Millis resync = live_confirmed_ ? options_.resync_interval * 5 : options_.resync_interval;
    if (now - last_activity_ >= resync) {
      last_activity_ = now;
      DESPOOL_RETURN_IF_ERROR(FetchStored());
      if (!ready_.empty()) continue;
    }
    if (now >= deadline) return std::optional<msg::Event>();
    const auto wake = std::min(deadline, last_activity_ + resync);
    if (!WaitReadable(*sub_, wake)) continue;
    zmq::message_t topic;
    if (!sub_->recv(topic, zmq::recv_flags::dontwait)) continue;
    std::string envelope_frame;
    bool have_envelope = false;
    while (sub_->get(zmq::sockopt::rcvmore)) {
      zmq::message_t part;
      (void)sub_->recv(part, zmq::recv_flags::dontwait);
      if (!have_envelope) {
        envelope_frame = part.to_string();
        have_envelope = true;
      }
    }
    if (!have_envelope) continue;
    auto decoded = msg::Decode(std::string_view(envelope_frame), ReplyLimits());
    if (!decoded.ok()) continue;  // not something we understand: ignore, the stream goes on
    auto* event = std::get_if<msg::Event>(&decoded.value().body);
    if (!event) continue;
    last_activity_ = Clock::now();
    if (!live_confirmed_ && event->seq != 0) {
      // The first live state event proves the subscription works; anything published before
      // it went live is in the store: fetch it before delivering this one.
      live_confirmed_ = true;
      DESPOOL_RETURN_IF_ERROR(FetchStored());
    }
    Enqueue(std::move(*event));
  }
}

}  // namespace despool::ctl
