// A scripted broker for client and despoolctl tests: a ROUTER frontend and a PUB events socket
// bound to ephemeral ports on 127.0.0.1, answering with real protocol messages (codec.h).
//
// Built in: `status` for one job id (from the jobs it knows), `events-since` (from the events
// it stored). Everything else goes to the test's handler, which runs on the broker thread and
// may return no reply (a silent broker). Emit() stores and publishes a state event from any
// thread; the loop publishes queued events within one poll slice.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "despool/messages/codec.h"
#include "despool/messages/topics.h"

namespace despool::testing {

inline msg::JobInfo MakeJob(const std::string& id, const std::string& dp, const std::string& package,
                            std::uint64_t version, msg::JobState state, std::int64_t updated_at_ms = 1764100000000) {
  msg::JobInfo j;
  j.id = id;
  j.dp = dp;
  j.package = package;
  j.version = version;
  j.source = "/srv/src/" + package + "-" + std::to_string(version);
  j.state = state;
  j.max_attempts = 10;
  j.created_at_ms = 1764100000000;
  j.updated_at_ms = updated_at_ms;
  return j;
}

class FakeBroker {
 public:
  using Handler = std::function<std::optional<msg::Body>(const msg::Envelope&, FakeBroker&)>;

  explicit FakeBroker(Handler handler = nullptr) : handler_(std::move(handler)) {
    frontend_.set(zmq::sockopt::linger, 0);
    pub_.set(zmq::sockopt::linger, 0);
    frontend_.bind("tcp://127.0.0.1:*");
    pub_.bind("tcp://127.0.0.1:*");
    frontend_endpoint_ = frontend_.get(zmq::sockopt::last_endpoint);
    events_endpoint_ = pub_.get(zmq::sockopt::last_endpoint);
    thread_ = std::thread([this] { Loop(); });
  }
  ~FakeBroker() {
    stop_ = true;
    thread_.join();
  }
  FakeBroker(const FakeBroker&) = delete;
  FakeBroker& operator=(const FakeBroker&) = delete;

  const std::string& frontend() const { return frontend_endpoint_; }
  const std::string& events() const { return events_endpoint_; }

  // Records `job` as known and, when `publish_state`, stores and publishes a state event.
  void Emit(const msg::JobInfo& job, bool store = true, bool publish = true) {
    std::lock_guard lock(mu_);
    jobs_[job.id] = job;
    msg::Event e;
    e.kind = msg::EventKind::kState;
    e.at_ms = job.updated_at_ms;
    e.job = job;
    if (store) {
      e.seq = ++last_seq_;
      stored_.push_back(e);
    }
    if (publish) outbox_.push_back(e);
  }
  // Publishes a progress event (never stored).
  void EmitProgress(const msg::JobInfo& job, const msg::Progress& p) {
    std::lock_guard lock(mu_);
    msg::Event e;
    e.kind = msg::EventKind::kProgress;
    e.job = job;
    e.progress = p;
    outbox_.push_back(e);
  }
  // Sets a job without any event (status only).
  void SetJob(const msg::JobInfo& job) {
    std::lock_guard lock(mu_);
    jobs_[job.id] = job;
  }
  // Pretends events up to `oldest - 1` were pruned.
  void SetOldestSeq(std::uint64_t oldest) {
    std::lock_guard lock(mu_);
    oldest_override_ = oldest;
  }
  std::vector<msg::Envelope> requests() const {
    std::lock_guard lock(mu_);
    return requests_;
  }
  std::size_t request_count(const char* type) const {
    std::lock_guard lock(mu_);
    std::size_t n = 0;
    for (const auto& r : requests_) n += std::string(msg::TypeName(r.body)) == type;
    return n;
  }

  // Sends a reply with an arbitrary id to the most recent requester (stale reply tests).
  void set_stale_reply_before_next(bool v) { stale_before_next_ = v; }

 private:
  void Loop() {
    while (!stop_) {
      std::vector<zmq_pollitem_t> items{{frontend_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, std::chrono::milliseconds(5));
      if (items[0].revents & ZMQ_POLLIN) HandleOne();
      Flush();
    }
  }

  void Flush() {
    std::vector<msg::Event> out;
    {
      std::lock_guard lock(mu_);
      out.swap(outbox_);
    }
    for (const auto& e : out) {
      msg::Envelope env;
      env.body = e;
      const std::string topic = msg::TopicFor(e.job.dp, e.job.package);
      pub_.send(zmq::buffer(topic), zmq::send_flags::sndmore);
      pub_.send(zmq::buffer(msg::Encode(env)), zmq::send_flags::none);
    }
  }

  void HandleOne() {
    zmq::message_t id, frame;
    (void)frontend_.recv(id);
    (void)frontend_.recv(frame);
    while (frontend_.get(zmq::sockopt::rcvmore)) {
      zmq::message_t extra;
      (void)frontend_.recv(extra);
    }
    auto decoded = msg::Decode(std::string_view(static_cast<const char*>(frame.data()), frame.size()));
    if (!decoded.ok()) {
      Send(id, msg::EncodeError(decoded.error()));
      return;
    }
    msg::Envelope& req = decoded.value();
    {
      std::lock_guard lock(mu_);
      requests_.push_back(req);
    }
    std::optional<msg::Body> reply = Builtin(req);
    if (!reply && handler_) reply = handler_(req, *this);
    if (!reply) return;  // silence
    if (stale_before_next_.exchange(false)) {
      msg::Envelope stale;
      stale.request_id = req.request_id + 1000;
      stale.body = msg::ErrorReply{msg::ErrorKind::kInternal, "stale"};
      Send(id, msg::Encode(stale));
    }
    msg::Envelope env;
    env.request_id = req.request_id;
    env.body = std::move(*reply);
    Send(id, msg::Encode(env));
  }

  std::optional<msg::Body> Builtin(const msg::Envelope& req) {
    std::lock_guard lock(mu_);
    if (const auto* s = std::get_if<msg::StatusRequest>(&req.body); s && s->job_id) {
      auto it = jobs_.find(*s->job_id);
      if (it == jobs_.end()) return msg::ErrorReply{msg::ErrorKind::kNotFound, "unknown job '" + *s->job_id + "'"};
      return msg::JobsReply{{it->second}};
    }
    if (const auto* s = std::get_if<msg::EventsSinceRequest>(&req.body)) {
      msg::EventsReply r;
      r.last_seq = last_seq_;
      r.oldest_seq = oldest_override_ ? oldest_override_ : (stored_.empty() ? 0 : stored_.front().seq);
      for (const auto& e : stored_) {
        if (e.seq <= s->since) continue;
        if (s->dp && e.job.dp != *s->dp) continue;
        if (s->package && e.job.package != *s->package) continue;
        if (r.events.size() >= s->limit) break;
        r.events.push_back(e);
      }
      return r;
    }
    return std::nullopt;
  }

  void Send(zmq::message_t& id, const std::string& frame) {
    frontend_.send(zmq::buffer(id.data(), id.size()), zmq::send_flags::sndmore);
    frontend_.send(zmq::buffer(frame), zmq::send_flags::none);
  }

  Handler handler_;
  zmq::context_t ctx_{1};
  zmq::socket_t frontend_{ctx_, zmq::socket_type::router};
  zmq::socket_t pub_{ctx_, zmq::socket_type::pub};
  std::string frontend_endpoint_, events_endpoint_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> stale_before_next_{false};

  mutable std::mutex mu_;
  std::map<std::string, msg::JobInfo> jobs_;
  std::vector<msg::Event> stored_;
  std::vector<msg::Event> outbox_;
  std::vector<msg::Envelope> requests_;
  std::uint64_t last_seq_ = 0;
  std::uint64_t oldest_override_ = 0;
};

}  // namespace despool::testing
