#include "despool/workers/service/worker.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <zmq.hpp>

#include "despool/common/logging.h"
#include "despool/messages/codec.h"
#include "despool/workers/service/executor.h"
#include "despool/workers/service/release_watcher.h"

namespace despool::workers::service {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using JobKey = std::pair<std::string, std::uint64_t>;  // (job id, attempt token)
using LaneKey = std::pair<std::string, std::string>;   // (dp, package; "" = verify of all)


// Shared between the loop (which may cancel) and the pool thread running it.
struct Task {
  msg::Dispatch dispatch;
  JobContext context;
  CancelToken cancel;
};

struct Completion {
  bool done = false;               // false: a progress update
  JobKey key;
  msg::Progress progress;
  msg::JobResult result;
  JobEffects effects;
};

struct LocalJob {
  std::shared_ptr<Task> task;
  LaneKey lane;
  bool running = false;
};

struct PendingResult {
  msg::JobResult result;
  Clock::time_point last_sent{};
  bool hint_due = false;           // released before the broker acknowledged the deferral
};

}  // namespace

class Worker::Impl {
 public:
  Impl(WorkerSettings settings, Engine& engine)
      : s_(std::move(settings)), engine_(engine), log_(GetLogger("worker")), ctx_(1),
        watcher_(MakeWatcherOptions(s_), MakeAutoProbe()) {
    if (s_.name.empty()) s_.name = DefaultWorkerName();
    if (s_.max_bytes_per_second > 0) limiter_ = MakeTokenBucket(s_.max_bytes_per_second);
    for (const auto& dp : s_.dps) roots_[dp.name] = dp.root;
    interval_ = s_.heartbeat_interval;
    backoff_ = s_.reconnect_min;
    std::random_device rd;
    std::uniform_int_distribution<std::uint64_t> dist;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(dist(rd)));
    routing_id_ = "w:" + s_.name.substr(0, 128) + ":" + std::to_string(::getpid()) + ":" + hex;
  }

  ~Impl() {
    StopPool();
    CloseSocket();
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  Status Run(int stop_fd) {
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) return SysError("eventfd", errno);
    if (Status st = watcher_.Init(); !st.ok()) {
      log_->warn("inotify unavailable, release watching falls back to re-probing error={}",
                 LogQuote(st.error().message));
    }
    StartPool();
    std::string dps;
    for (const auto& dp : s_.dps) dps += (dps.empty() ? "" : ",") + dp.name;
    log_->info("worker starting name={} broker={} dps={} concurrency={} max_bytes_per_second={}", LogQuote(s_.name),
               s_.broker, dps, s_.concurrency, s_.max_bytes_per_second);
    if (Status st = Connect(Clock::now()); !st.ok()) return st;

    std::vector<zmq_pollitem_t> items;
    for (;;) {
      Clock::time_point now = Clock::now();
      items.clear();
      std::optional<std::size_t> sock_index;
      if (socket_) {
        sock_index = items.size();
        items.push_back({socket_->handle(), 0, ZMQ_POLLIN, 0});
      }
      const std::size_t wake_index = items.size();
      items.push_back({nullptr, wake_fd_, ZMQ_POLLIN, 0});
      const std::size_t stop_index = items.size();
      if (!stop_fd_closed_) items.push_back({nullptr, stop_fd, ZMQ_POLLIN, 0});
      if (!draining_) watcher_.AppendPollItems(items);
      const auto timeout = std::clamp(NextDeadline(now) - now, Clock::duration::zero(),
                                      Clock::duration(milliseconds(1000)));
      try {
        zmq::poll(items, std::chrono::duration_cast<milliseconds>(timeout) + milliseconds(1));
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        return MakeError(ErrorCode::kInternal, std::string("poll: ") + e.what());
      }
      now = Clock::now();
      if (!stop_fd_closed_ && (items[stop_index].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) {
        char buf[256];  // a signalfd_siginfo (128 bytes), or pipe bytes
        // A pipe whose writer closed reads 0: one stop request, then stop polling it.
        if (::read(stop_fd, buf, sizeof buf) <= 0) stop_fd_closed_ = true;
        OnStopRequest(now);
      }
      if (items[wake_index].revents & ZMQ_POLLIN) {
        std::uint64_t n = 0;
        if (::read(wake_fd_, &n, sizeof n) < 0 && errno != EAGAIN) log_->warn("eventfd read failed");
        DrainCompletions(now);
      }
      if (sock_index && socket_ && (items[*sock_index].revents & ZMQ_POLLIN)) ReadSocket(now);
      if (!draining_) {
        for (const Released& r : watcher_.Process(items, now)) OnReleased(r);
      }
      RunTimers(now);
      if (draining_ && DrainDone(now)) break;
    }
    FinishDrain();
    return Status::Ok();
  }

 private:
  static ReleaseWatcherOptions MakeWatcherOptions(const WorkerSettings& s) {
    ReleaseWatcherOptions o;
    o.max_watches = s.max_watches;
    o.max_pidfds = s.max_pidfds;
    o.reprobe_interval = s.reprobe_interval;
    o.max_watch_time = s.max_watch_time;
    return o;
  }

  // ---- pool ----

  void StartPool() {
    for (std::uint32_t i = 0; i < std::max<std::uint32_t>(1, s_.concurrency); ++i) {
      threads_.emplace_back([this] { PoolThread(); });
    }
  }

  void StopPool() {
    {
      std::lock_guard lock(mu_);
      pool_stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  void PoolThread() {
    for (;;) {
      std::shared_ptr<Task> task;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return pool_stop_ || !tasks_.empty(); });
        if (pool_stop_ && tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      const JobKey key{task->dispatch.job_id, task->dispatch.attempt};
      Clock::time_point last_progress{};
      auto progress = [&](const msg::Progress& p) {
        const auto now = Clock::now();
        if (now - last_progress < s_.progress_interval) return;
        last_progress = now;
        Completion c;
        c.key = key;
        c.progress = p;
        Post(std::move(c));
      };
      Completion c;
      c.done = true;
      c.key = key;
      c.result = RunJob(engine_, task->dispatch, task->context, progress, task->cancel, &c.effects);
      Post(std::move(c));
    }
  }

  void Post(Completion c) {
    {
      std::lock_guard lock(mu_);
      completions_.push_back(std::move(c));
    }
    const std::uint64_t one = 1;
    if (::write(wake_fd_, &one, sizeof one) < 0) {
      // EAGAIN only when the counter would overflow: the loop is awake anyway.
    }
  }

  // ---- jobs ----

  void OnDispatch(msg::Dispatch d, Clock::time_point now) {
    const JobKey key{d.job_id, d.attempt};
    watcher_.Drop(d.job_id);  // re-dispatched: whatever we watched for it is moot
    if (jobs_.count(key) > 0 || held_.count(key) > 0 || unacked_.count(key) > 0) {
      log_->debug("duplicate dispatch ignored job={} attempt={}", d.job_id, d.attempt);
      return;
    }
    auto root = roots_.find(d.dp);
    if (root == roots_.end()) {
      msg::JobResult r;
      r.job_id = d.job_id;
      r.attempt = d.attempt;
      r.outcome = msg::Outcome::kPermanentError;
      r.error = "DP '" + d.dp + "' is not served by worker '" + s_.name + "'";
      log_->warn("dispatch for a DP not served job={} dp={}", d.job_id, d.dp);
      AddResult(std::move(r), now);
      return;
    }
    if (draining_) {
      // Held unanswered: it keeps our credit used, and the final disconnect requeues it.
      log_->info("draining: dispatch held for requeue job={} attempt={}", d.job_id, d.attempt);
      held_.insert(key);
      return;
    }
    log_->info("job received job={} attempt={} kind={} dp={} package={} version={}", d.job_id, d.attempt,
               msg::ToString(d.kind), d.dp, LogQuote(d.package), d.version);
    auto task = std::make_shared<Task>();
    task->context.dp_root = root->second;
    task->context.rate_limiter = limiter_;
    task->context.lock_wait = s_.lock_wait;
    LocalJob job;
    job.lane = {d.dp, d.package};
    task->dispatch = std::move(d);
    job.task = std::move(task);
    jobs_.emplace(key, std::move(job));
    waiting_.push_back(key);
    TryStart();
  }

  void TryStart() {
    if (draining_) return;
    for (auto it = waiting_.begin(); it != waiting_.end() && running_ < s_.concurrency;) {
      auto j = jobs_.find(*it);
      if (j == jobs_.end()) {
        it = waiting_.erase(it);
        continue;
      }
      if (busy_lanes_.count(j->second.lane) > 0) {
        ++it;  // one job per (DP, package) at a time: waits for the lane
        continue;
      }
      busy_lanes_.insert(j->second.lane);
      j->second.running = true;
      ++running_;
      {
        std::lock_guard lock(mu_);
        tasks_.push_back(j->second.task);
      }
      cv_.notify_one();
      it = waiting_.erase(it);
    }
  }

  void OnCancel(const msg::CancelJob& c, Clock::time_point now) {
    const JobKey key{c.job_id, c.attempt};
    auto j = jobs_.find(key);
    if (j != jobs_.end()) {
      if (j->second.running) {
        log_->info("cancelling running job job={} attempt={}", c.job_id, c.attempt);
        j->second.task->cancel.Cancel();
      } else {
        log_->info("cancelled before start job={} attempt={}", c.job_id, c.attempt);
        jobs_.erase(j);
        waiting_.erase(std::remove(waiting_.begin(), waiting_.end(), key), waiting_.end());
        AddResult(CancelledResult(key, "cancelled before it started"), now);
      }
      return;
    }
    if (held_.erase(key) > 0) AddResult(CancelledResult(key, "cancelled while the worker was draining"), now);
  }

  static msg::JobResult CancelledResult(const JobKey& key, std::string why) {
    msg::JobResult r;
    r.job_id = key.first;
    r.attempt = key.second;
    r.outcome = msg::Outcome::kCancelled;
    r.error = std::move(why);
    return r;
  }

  void DrainCompletions(Clock::time_point now) {
    std::vector<Completion> batch;
    {
      std::lock_guard lock(mu_);
      batch.swap(completions_);
    }
    for (auto& c : batch) {
      if (!c.done) {
        if (socket_ && registered_ && jobs_.count(c.key) > 0) {
          Send(msg::ProgressReport{c.key.first, c.key.second, c.progress});
        }
        continue;
      }
      auto j = jobs_.find(c.key);
      std::string base_dir;
      if (j != jobs_.end()) {
        const msg::Dispatch& d = j->second.task->dispatch;
        base_dir = j->second.task->context.dp_root + (d.package.empty() ? "" : "/" + d.package);
        busy_lanes_.erase(j->second.lane);
        --running_;
        jobs_.erase(j);
      }
      const JobEffects& fx = c.effects;
      if (fx.refreshed) metrics_.refreshes += 1;
      metrics_.refresh_ms_total += fx.refresh_ms;
      metrics_.bytes_copied += fx.bytes_copied;
      metrics_.bytes_linked += fx.bytes_linked;
      metrics_.inuse_checks += fx.inuse_checks;
      metrics_.inuse_check_us_total += fx.inuse_check_us;
      const msg::JobResult& r = c.result;
      log_->info("job finished job={} attempt={} outcome={}{}", r.job_id, r.attempt, msg::ToString(r.outcome),
                 r.error ? " error=" + LogQuote(*r.error) : std::string());
      if (r.outcome == msg::Outcome::kDeferred && !draining_ && !base_dir.empty() && !fx.in_use_all.empty()) {
        WatchRequest w;
        w.job_id = r.job_id;
        w.attempt = r.attempt;
        w.base_dir = base_dir;
        w.paths = fx.in_use_all;
        w.holders = fx.holders_all;
        if (!watcher_.Watch(w, now)) {
          log_->info("release watch skipped (over the watch cap) job={} paths={}", r.job_id, w.paths.size());
        } else {
          log_->debug("watching for release job={} paths={} holders={} watches={} pidfds={}", r.job_id,
                      w.paths.size(), w.holders.size(), watcher_.inotify_watches(), watcher_.pidfds());
        }
      }
      AddResult(std::move(c.result), now);
    }
    TryStart();
  }

  void AddResult(msg::JobResult r, Clock::time_point now) {
    const JobKey key{r.job_id, r.attempt};
    PendingResult& p = unacked_[key];
    p.result = std::move(r);
    p.last_sent = now;
    if (socket_) Send(p.result);
  }

  void OnResultAck(const msg::ResultAck& a) {
    auto it = unacked_.find({a.job_id, a.attempt});
    if (it == unacked_.end()) return;
    const bool hint = it->second.hint_due;
    unacked_.erase(it);
    log_->debug("result acknowledged job={} attempt={}", a.job_id, a.attempt);
    if (hint) SendHint(a.job_id, a.attempt);
  }

  void OnReleased(const Released& r) {
    auto it = unacked_.find({r.job_id, r.attempt});
    if (it != unacked_.end()) {
      // The broker must have the deferral first, or it would ignore the hint.
      it->second.hint_due = true;
      return;
    }
    SendHint(r.job_id, r.attempt);
  }

  void SendHint(const std::string& job_id, std::uint64_t attempt) {
    log_->info("in-use files released, sending release hint job={} attempt={}", job_id, attempt);
    if (socket_) Send(msg::ReleaseHint{job_id, attempt});
  }

  // ---- connection ----

  Status Connect(Clock::time_point now) {
    CloseSocket();
    try {
      socket_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
      socket_->set(zmq::sockopt::linger, 0);
      socket_->set(zmq::sockopt::routing_id, routing_id_);
      socket_->set(zmq::sockopt::reconnect_ivl, 100);
      socket_->set(zmq::sockopt::reconnect_ivl_max, 1000);
      socket_->set(zmq::sockopt::maxmsgsize, s_.max_message_bytes);
      if (Status st = ApplyCurveClient(socket_->handle(), s_.curve); !st.ok()) {
        socket_.reset();
        return st;
      }
      socket_->connect(s_.broker);
    } catch (const zmq::error_t& e) {
      socket_.reset();
      return MakeError(ErrorCode::kInvalidArgument, "cannot connect to broker '" + s_.broker + "': " + e.what());
    }
    registered_ = false;
    last_recv_ = now;
    reconnect_at_.reset();
    SendRegister();
    return Status::Ok();
  }

  void CloseSocket() {
    if (!socket_) return;
    socket_->close();
    socket_.reset();
    registered_ = false;
  }

  void SendRegister() {
    msg::Register reg;
    reg.name = s_.name;
    for (const auto& dp : s_.dps) reg.dps.push_back(dp.name);
    reg.capacity = s_.concurrency;
    log_->info("registering name={} broker={}", LogQuote(s_.name), s_.broker);
    Send(reg);
  }

  void ReadSocket(Clock::time_point now) {
    for (int budget = 0; budget < 1000 && socket_; ++budget) {
      zmq::message_t frame;
      std::optional<std::size_t> got;
      try {
        got = socket_->recv(frame, zmq::recv_flags::dontwait);
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        log_->warn("recv failed error={}", LogQuote(e.what()));
        return;
      }
      if (!got) return;
      if (frame.more()) {
        // Not one frame: drop the whole message (PROTOCOL.md 2).
        while (frame.more()) {
          if (!socket_->recv(frame, zmq::recv_flags::dontwait)) break;
        }
        log_->warn("dropped a multi-frame message from the broker");
        continue;
      }
      last_recv_ = now;
      auto decoded = msg::Decode(std::string_view(static_cast<const char*>(frame.data()), frame.size()));
      if (!decoded.ok()) {
        // Never answer an error with an error; undecodable broker messages are dropped.
        log_->warn("undecodable message from the broker error={}", LogQuote(decoded.error().message));
        continue;
      }
      HandleMessage(std::move(decoded.value().body), now);
    }
  }

  void HandleMessage(msg::Body body, Clock::time_point now) {
    if (auto* ack = std::get_if<msg::RegisterAck>(&body)) {
      const bool first = !registered_;
      registered_ = true;
      backoff_ = s_.reconnect_min;
      if (ack->heartbeat_interval_ms >= 10) interval_ = milliseconds(ack->heartbeat_interval_ms);
      if (first) log_->info("registered name={} heartbeat_interval_ms={} unacked_results={}", LogQuote(s_.name),
                            interval_.count(), unacked_.size());
      next_heartbeat_ = now;
      ResendResults(now, true);
      return;
    }
    if (std::holds_alternative<msg::Heartbeat>(body)) return;
    if (auto* d = std::get_if<msg::Dispatch>(&body)) {
      OnDispatch(std::move(*d), now);
      return;
    }
    if (auto* c = std::get_if<msg::CancelJob>(&body)) {
      OnCancel(*c, now);
      return;
    }
    if (auto* a = std::get_if<msg::ResultAck>(&body)) {
      OnResultAck(*a);
      return;
    }
    if (auto* dc = std::get_if<msg::Disconnect>(&body)) {
      log_->info("broker asked to register again reason={}", LogQuote(dc->reason));
      registered_ = false;
      SendRegister();
      return;
    }
    if (auto* err = std::get_if<msg::ErrorReply>(&body)) {
      log_->warn("error from broker kind={} message={}", msg::ToString(err->kind), LogQuote(err->message));
      return;
    }
    log_->warn("unexpected message from broker type={}", msg::TypeName(body));
  }

  void Send(const msg::Body& body) {
    if (!socket_) return;
    const std::string payload = msg::Encode(msg::Envelope{msg::kProtocolVersion, 0, body});
    for (int tries = 0; tries < 3; ++tries) {
      try {
        if (!socket_->send(zmq::buffer(payload), zmq::send_flags::dontwait)) {
          log_->debug("send dropped (queue full) type={}", msg::TypeName(body));
        }
        return;
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        log_->warn("send failed type={} error={}", msg::TypeName(body), LogQuote(e.what()));
        return;
      }
    }
  }

  void ResendResults(Clock::time_point now, bool all) {
    if (!socket_) return;
    for (auto& [key, p] : unacked_) {
      if (!all && now - p.last_sent < interval_) continue;
      p.last_sent = now;
      Send(p.result);
    }
  }

  void RunTimers(Clock::time_point now) {
    if (!socket_) {
      if (reconnect_at_ && now >= *reconnect_at_) {
        if (Status st = Connect(now); !st.ok()) log_->error("reconnect failed error={}", LogQuote(st.error().message));
      }
      return;
    }
    if (now - last_recv_ > interval_ * s_.liveness) {
      log_->warn("broker silent, reconnecting silent_ms={} backoff_ms={}",
                 std::chrono::duration_cast<milliseconds>(now - last_recv_).count(), backoff_.count());
      CloseSocket();
      reconnect_at_ = now + backoff_;
      backoff_ = std::min(backoff_ * 2, s_.reconnect_max);
      return;
    }
    if (registered_ && now >= next_heartbeat_) {
      msg::Heartbeat hb;
      hb.running = static_cast<std::uint32_t>(running_);
      msg::WorkerMetrics m = metrics_;
      m.inuse_checks += watcher_.probe_count();
      m.inuse_check_us_total += watcher_.probe_us_total();
      hb.metrics = m;
      hb.draining = draining_;
      Send(hb);
      next_heartbeat_ = now + interval_;
    }
    ResendResults(now, false);
  }

  Clock::time_point NextDeadline(Clock::time_point now) const {
    Clock::time_point next = now + milliseconds(1000);
    auto consider = [&](Clock::time_point t) { next = std::min(next, t); };
    if (socket_) {
      consider(last_recv_ + interval_ * s_.liveness + milliseconds(1));
      if (registered_) consider(next_heartbeat_);
      for (const auto& [key, p] : unacked_) consider(p.last_sent + interval_);
    } else if (reconnect_at_) {
      consider(*reconnect_at_);
    }
    if (!draining_) {
      if (auto w = watcher_.NextDeadline()) consider(*w);
    } else {
      if (running_ > 0 && !cancelled_all_) consider(drain_deadline_);
      if (flush_deadline_) consider(*flush_deadline_);
    }
    return next;
  }

  // ---- shutdown ----

  void OnStopRequest(Clock::time_point now) {
    ++stop_requests_;
    if (!draining_) {
      draining_ = true;
      drain_deadline_ = now + s_.drain_timeout;
      next_heartbeat_ = now;  // tell the broker at once (heartbeat.draining): no more dispatches
      // Jobs not started yet are held like later dispatches: requeued by our disconnect.
      for (const auto& key : waiting_) {
        held_.insert(key);
        jobs_.erase(key);
      }
      waiting_.clear();
      watcher_.Clear();
      log_->info("stop requested: draining running={} held={} drain_timeout_ms={}", running_, held_.size(),
                 s_.drain_timeout.count());
    } else if (!cancelled_all_) {
      log_->info("second stop request: cancelling running jobs running={}", running_);
      CancelAll();
    }
  }

  void CancelAll() {
    cancelled_all_ = true;
    for (auto& [key, job] : jobs_) {
      if (job.running) job.task->cancel.Cancel();
    }
  }

  bool DrainDone(Clock::time_point now) {
    if (running_ > 0) {
      if (!cancelled_all_ && now >= drain_deadline_) {
        log_->info("drain timeout: cancelling running jobs running={}", running_);
        CancelAll();
      }
      return false;
    }
    if (unacked_.empty()) return true;
    if (!flush_deadline_) flush_deadline_ = now + s_.result_flush_timeout;
    if (now >= *flush_deadline_) {
      log_->warn("giving up on unacknowledged results unacked={}", unacked_.size());
      return true;
    }
    return false;
  }

  void FinishDrain() {
    StopPool();
    if (socket_) {
      Send(msg::Disconnect{"worker shutting down"});
      // Give the disconnect a moment to leave when the broker is there to take it; the
      // broker's liveness check covers its loss.
      socket_->set(zmq::sockopt::linger, registered_ ? 1000 : 0);
      CloseSocket();
    }
    log_->info("worker stopped name={} held_requeued={}", LogQuote(s_.name), held_.size());
  }

  WorkerSettings s_;
  Engine& engine_;
  std::shared_ptr<spdlog::logger> log_;
  std::shared_ptr<RateLimiter> limiter_;
  std::map<std::string, std::string> roots_;   // dp name -> absolute root

  // Pool (mu_ guards tasks_, completions_, pool_stop_).
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> tasks_;
  std::vector<Completion> completions_;
  bool pool_stop_ = false;
  std::vector<std::thread> threads_;
  int wake_fd_ = -1;

  // Loop-thread state.
  zmq::context_t ctx_;
  std::unique_ptr<zmq::socket_t> socket_;
  std::string routing_id_;
  bool registered_ = false;
  milliseconds interval_{1000};
  milliseconds backoff_{1000};
  Clock::time_point last_recv_{};
  Clock::time_point next_heartbeat_{};
  std::optional<Clock::time_point> reconnect_at_;

  std::map<JobKey, LocalJob> jobs_;            // waiting or running here
  std::deque<JobKey> waiting_;                 // FIFO of jobs not started
  std::set<LaneKey> busy_lanes_;
  std::size_t running_ = 0;
  std::set<JobKey> held_;                      // dispatched while draining, never answered
  std::map<JobKey, PendingResult> unacked_;
  msg::WorkerMetrics metrics_;
  ReleaseWatcher watcher_;

  bool draining_ = false;
  bool cancelled_all_ = false;
  int stop_requests_ = 0;
  bool stop_fd_closed_ = false;
  Clock::time_point drain_deadline_{};
  std::optional<Clock::time_point> flush_deadline_;
};

Worker::Worker(WorkerSettings settings, Engine& engine)
    : impl_(std::make_unique<Impl>(std::move(settings), engine)) {}

Worker::~Worker() = default;

Status Worker::Run(int stop_fd) { return impl_->Run(stop_fd); }

}  // namespace despool::workers::service
