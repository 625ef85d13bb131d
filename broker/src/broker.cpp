#include "despool/broker/broker.h"

#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "despool/broker/commit_thread.h"
#include "despool/broker/observability.h"
#include "despool/common/logging.h"
#include "despool/common/time.h"
#include "despool/messages/codec.h"
#include "despool/messages/topics.h"
#include "ack_path.h"
#include "queries.h"
#include "row_warmer.h"

namespace despool::broker {
namespace {

using msg::Body;
using msg::Envelope;
using msg::ErrorKind;

bool IsFrontendMutation(const Body& b) {
  return std::holds_alternative<msg::SubmitRequest>(b) || std::holds_alternative<msg::RetryRequest>(b) ||
         std::holds_alternative<msg::CancelRequest>(b) || std::holds_alternative<msg::VerifyRequest>(b);
}

bool IsFrontendQuery(const Body& b) {
  return std::holds_alternative<msg::StatusRequest>(b) || std::holds_alternative<msg::WorkersRequest>(b) ||
         std::holds_alternative<msg::DeadRequest>(b) || std::holds_alternative<msg::StatsRequest>(b) ||
         std::holds_alternative<msg::EventsSinceRequest>(b);
}

bool IsWorkerMessage(const Body& b) {
  return std::holds_alternative<msg::Register>(b) || std::holds_alternative<msg::Heartbeat>(b) ||
         std::holds_alternative<msg::ProgressReport>(b) || std::holds_alternative<msg::JobResult>(b) ||
         std::holds_alternative<msg::ReleaseHint>(b) || std::holds_alternative<msg::Disconnect>(b);
}

// The file descriptor of the connection a frame arrived on (ZMQ_SRCFD), or -1.
int SourceFd(zmq::message_t& frame) {
  const int fd = zmq_msg_get(frame.handle(), ZMQ_SRCFD);
  return fd;
}

std::int64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

std::uint64_t Ns(std::chrono::steady_clock::duration d) {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count());
}

// Durations in 10 µs buckets up to 100 ms (the last bucket holds the rest), for the benchmark
// figures in LoopMetrics.
class MicrosHistogram {
 public:
  void Add(std::uint64_t ns) {
    ++buckets_[std::min<std::uint64_t>(ns / 10'000, kBuckets - 1)];
    ++count_;
  }
  // The smallest duration (µs) that a fraction q of the samples do not exceed.
  std::uint64_t Quantile(double q) const {
    if (count_ == 0) return 0;
    const auto want = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(q * static_cast<double>(count_) + 0.5));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += buckets_[i];
      if (seen >= want) return (i + 1) * 10;
    }
    return kBuckets * 10;
  }

 private:
  static constexpr std::size_t kBuckets = 10'000;
  std::vector<std::uint64_t> buckets_ = std::vector<std::uint64_t>(kBuckets);
  std::uint64_t count_ = 0;
};

std::string Printable(std::string_view id) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : id.substr(0, 16)) {
    s += hex[c >> 4];
    s += hex[c & 15];
  }
  return s;
}

}  // namespace

class Broker::Impl {
 public:
  Impl(BrokerSettings settings, std::unique_ptr<Store> store, std::unique_ptr<Store> reader)
      : s_(std::move(settings)),
        store_(std::move(store)),
        reader_(std::move(reader)),
        log_(GetLogger("broker")),
        ctx_(1),
        frontend_(ctx_, zmq::socket_type::router),
        backend_(ctx_, zmq::socket_type::router),
        pub_(ctx_, zmq::socket_type::pub) {
    limits_.max_frame_bytes = s_.max_frame_bytes;
  }

  ~Impl() {
    frontend_.close();
    backend_.close();
    pub_.close();
  }

  Status Start(BoundEndpoints& out) {
    // Active jobs stream from the store straight into the Core (a million deferred jobs are
    // never materialised as full records).
    CoreOptions core_options = s_.core;
    if (reader_ && s_.warm_ahead_ms > 0 && s_.store_path != ":memory:" && !s_.store_path.empty()) {
      // Parked jobs' rows are read ahead on the warmer's thread: a due retry's reload must not
      // wait on the disk on this thread. Without it (no file, tests) nothing is announced.
      auto warmer = RowWarmer::Start(s_.store_path, s_.store);
      if (warmer.ok()) {
        warmer_ = std::move(warmer).value();
        core_options.warm_ahead_ms = s_.warm_ahead_ms;
      } else {
        log_->warn("cannot start the row warmer error={}", LogQuote(warmer.error().message));
      }
    }
    core_ = std::make_unique<Core>(core_options, &reads());
    const std::int64_t load_now = NowMs();
    std::size_t active = 0;
    auto loaded = store_->Load([&](JobRecord&& r) {
      ++active;
      core_->RecoverJob(std::move(r), load_now);
    });
    if (!loaded.ok()) return loaded.take_error();
    core_->Recover(std::move(loaded.value()), load_now);
    // Config DPs are known without being persisted; the Core queued nothing to commit, but a
    // defensive commit keeps memory and store aligned if it ever does.
    if (Status st = store_->Commit(core_->TakeBatch()); !st.ok()) return st;
    for (const auto& line : store_->Describe()) log_->info("store pragma {}", line);
    log_->info("store loaded path={} active_jobs={} last_event_seq={}", LogQuote(s_.store_path), active,
               core_->LastEventSeq());
    if (!s_.security.curve_secret_key.empty()) {
      auto auth = BrokerAuth::Start(ctx_, s_.security);
      if (!auth.ok()) return auth.take_error();
      auth_ = std::move(auth).value();
      log_->info("CURVE enabled public_key={} authorized_keys={}", auth_->public_key(), auth_->key_count());
    }
    try {
      if (auth_) {
        auth_->ApplyServer(frontend_, kZapDomainFrontend);
        auth_->ApplyServer(backend_, kZapDomainBackend);
        auth_->ApplyServer(pub_, kZapDomainEvents);
      }
      for (auto* sock : {&frontend_, &backend_}) {
        sock->set(zmq::sockopt::router_mandatory, 1);
        sock->set(zmq::sockopt::linger, 0);
        sock->set(zmq::sockopt::maxmsgsize, s_.max_message_bytes);
      }
      frontend_.set(zmq::sockopt::sndhwm, s_.frontend_hwm);
      frontend_.set(zmq::sockopt::rcvhwm, s_.frontend_hwm);
      backend_.set(zmq::sockopt::sndhwm, s_.backend_hwm);
      backend_.set(zmq::sockopt::rcvhwm, s_.backend_hwm);
      backend_.set(zmq::sockopt::router_handover, 1);
      pub_.set(zmq::sockopt::linger, 0);
      pub_.set(zmq::sockopt::sndhwm, s_.events_hwm);
      pub_.set(zmq::sockopt::maxmsgsize, s_.max_message_bytes);
      frontend_.bind(s_.frontend);
      backend_.bind(s_.backend);
      pub_.bind(s_.events);
      out.frontend = frontend_.get(zmq::sockopt::last_endpoint);
      out.backend = backend_.get(zmq::sockopt::last_endpoint);
      out.events = pub_.get(zmq::sockopt::last_endpoint);
    } catch (const zmq::error_t& e) {
      return MakeError(ErrorCode::kUnavailable, std::string("bind: ") + e.what());
    }
    if (reader_) {
      commit_thread_ = std::make_unique<CommitThread>(*store_);
      if (!commit_thread_->ok()) return MakeError(ErrorCode::kIo, "cannot start the commit thread");
    }
    if (!s_.http.empty()) {
      DESPOOL_RETURN_IF_ERROR(obs_.StartHttp({s_.http, s_.http_token}, s_.store_path, s_.store, &out.http));
    }
    obs_.MaybePublish(*core_, m_, NowMs(), true);
    log_->info("listening frontend={} backend={} events={} pipelined_commits={}", out.frontend, out.backend,
               out.events, reader_ ? "yes" : "no");
    if (!s_.endpoints_file.empty()) {
      const std::string tmp = s_.endpoints_file + ".tmp";
      {
        std::ofstream f(tmp, std::ios::trunc);
        f << "frontend=" << out.frontend << "\nbackend=" << out.backend << "\nevents=" << out.events << "\n";
        if (!out.http.empty()) f << "http=" << out.http << "\n";
        if (!f.good()) return MakeError(ErrorCode::kIo, "write endpoints file " + tmp);
      }
      std::error_code ec;
      std::filesystem::rename(tmp, s_.endpoints_file, ec);
      if (ec) return MakeError(ErrorCode::kIo, "rename endpoints file: " + ec.message());
    }
    return Status::Ok();
  }

  LoopMetrics metrics() const {
    LoopMetrics m = m_;
    m.commit_thread = commit_thread_ != nullptr;
    if (commit_thread_) {
      m.commit_ns = commit_thread_->commit_ns();
      m.commit_cpu_ns = commit_thread_->commit_cpu_ns();
    }
    m.commit_p50_us = commit_hist_.Quantile(0.50);
    m.commit_p99_us = commit_hist_.Quantile(0.99);
    m.commit_max_us = commit_hist_.Quantile(1.0);
    m.submit_ack_p50_us = ack_hist_.Quantile(0.50);
    m.submit_ack_p99_us = ack_hist_.Quantile(0.99);
    m.submit_ack_max_us = ack_hist_.Quantile(1.0);
    if (core_) {
      const auto& h = core_->DueLateness();
      m.active_jobs = core_->ActiveJobs();
      m.due_retries = h.count;
      m.due_lateness_p50_ms = h.Quantile(0.50);
      m.due_lateness_p99_ms = h.Quantile(0.99);
      m.due_lateness_max_ms = h.Quantile(1.0);
      const auto& d = core_->DueDispatchLateness();
      m.due_dispatched = d.count;
      m.due_dispatch_p50_ms = d.Quantile(0.50);
      m.due_dispatch_p99_ms = d.Quantile(0.99);
      m.due_dispatch_max_ms = d.Quantile(1.0);
    }
    return m;
  }

  // The context's I/O thread carries every request and ack. It names itself ("ZMQbg/IO/0") once
  // running, which may be after the sockets exist, so this waits for a message to have come
  // through it; the search (a /proc listing) stops after 100 rounds that read messages, in case
  // this libzmq names its threads otherwise. broker_bench names its own contexts' threads
  // "<prefix>/ZMQbg/..."; another unprefixed context in this process would be marked too, which
  // only costs it finer slices. True once one was found.
  static bool MarkZmqIoThreads() {
    const auto io = ThreadsNamed("ZMQbg/IO/");
    for (pid_t tid : io) MarkAckPathThread("zmq-io", tid);
    return !io.empty();
  }

  Status Run(int stop_fd) {
    MarkAckPathThread("loop");
    const std::int64_t cpu_start = ThreadCpuNs();
    struct CpuTally {  // records the loop thread's CPU time however Run returns
      LoopMetrics& m;
      std::int64_t start;
      ~CpuTally() { m.loop_cpu_ns = static_cast<std::uint64_t>(ThreadCpuNs() - start); }
    } tally{m_, cpu_start};
    bool stopping = false;
    std::vector<zmq_pollitem_t> items;
    while (!stopping) {
      std::int64_t now = NowMs();
      std::int64_t timeout = 1000;
      if (auto d = core_->NextDeadline()) timeout = std::clamp<std::int64_t>(*d - now, 0, 1000);
      items.assign({{frontend_.handle(), 0, ZMQ_POLLIN, 0},
                    {backend_.handle(), 0, ZMQ_POLLIN, 0},
                    {nullptr, stop_fd, ZMQ_POLLIN, 0}});
      if (inflight_) items.push_back({nullptr, commit_thread_->notify_fd(), ZMQ_POLLIN, 0});
      auto t0 = std::chrono::steady_clock::now();
      try {
        zmq::poll(items, std::chrono::milliseconds(timeout));
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        return MakeError(ErrorCode::kInternal, std::string("poll: ") + e.what());
      }
      auto t1 = std::chrono::steady_clock::now();
      m_.poll_ns += Ns(t1 - t0);
      if (items.size() > 3 && (items[3].revents & ZMQ_POLLIN)) DESPOOL_RETURN_IF_ERROR(FinishCommit());
      if (items[2].revents & ZMQ_POLLIN) {
        stopping = true;
        log_->info("stop requested: finishing the current round");
        core_->SetDraining(true);
      }
      now = NowMs();
      std::size_t handled = 0;
      std::size_t reads_since_check = 0;
      bool more = true;
      while (more && handled < s_.max_round_messages) {
        // A due retry is late from its due time on: end a long read phase early so Tick makes it
        // dispatchable now rather than after up to max_round_messages more messages.
        if (++reads_since_check == 64) {
          reads_since_check = 0;
          if (auto due = core_->NextDue(); due && *due <= NowMs()) break;
        }
        more = false;
        if (ReadOne(frontend_, true, now)) {
          more = true;
          ++handled;
        }
        if (ReadOne(backend_, false, now)) {
          more = true;
          ++handled;
        }
      }
      if (handled > 0 && io_thread_search_rounds_ > 0) {
        if (MarkZmqIoThreads()) {
          io_thread_search_rounds_ = 0;
        } else if (--io_thread_search_rounds_ == 0) {
          log_->info("ZeroMQ's I/O thread not found by name: it keeps the default scheduler slice");
        }
      }
      auto t2 = std::chrono::steady_clock::now();
      m_.read_ns += Ns(t2 - t1);
      m_.messages += handled;
      m_.max_round_messages = std::max<std::uint64_t>(m_.max_round_messages, handled);
      ++m_.rounds;
      // A fresh clock: the read phase took time, and due retries are measured against it.
      core_->Tick(NowMs());
      if (warmer_) {
        if (auto ids = core_->TakeWarm(); !ids.empty()) warmer_->Warm(std::move(ids));
      }
      m_.tick_ns += Ns(std::chrono::steady_clock::now() - t2);
      // While a commit is in flight the round's changes keep accumulating in the Core's batch;
      // they go into the next transaction as soon as the current one is durable.
      if (!inflight_) DESPOOL_RETURN_IF_ERROR(StartCommit());
      obs_.MaybePublish(*core_, m_, now);
    }
    // Drain: wait for the in-flight commit, then commit whatever accumulated meanwhile.
    while (inflight_ || core_->HasPendingOutput() || !accum_.replies.empty() || !accum_.queries.empty()) {
      if (inflight_) {
        DESPOOL_RETURN_IF_ERROR(FinishCommit());
      } else {
        DESPOOL_RETURN_IF_ERROR(StartCommit());
      }
    }
    // Tell workers we are going; they reconnect and re-register with the next broker.
    for (const auto& peer : worker_peers_) {
      SendEnvelope(backend_, peer, Envelope{msg::kProtocolVersion, 0, msg::Disconnect{"broker shutting down"}});
    }
    log_->info("stopped cleanly");
    return Status::Ok();
  }

 private:
  struct Pending {
    std::string peer;
    std::uint64_t request_id = 0;
    Body body;
    std::chrono::steady_clock::time_point received{};  // mutations: for the submit->ack histogram
  };
  // Everything that may only leave once a batch is committed, and that batch.
  struct Outputs {
    std::vector<Pending> replies;    // mutation replies (submit acks...)
    std::vector<Pending> queries;    // read-only requests, answered after the commit
    std::vector<ToWorker> outbox;
    std::vector<msg::Event> progress;
    WriteBatch batch;
  };

  // Reads one message from a ROUTER. False when none is waiting.
  bool ReadOne(zmq::socket_t& sock, bool is_frontend, std::int64_t now) {
    std::vector<zmq::message_t>& frames = frames_;  // reused: no allocation per message
    frames.clear();
    zmq::message_t first;
    std::optional<std::size_t> got;
    try {
      got = sock.recv(first, zmq::recv_flags::dontwait);
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) log_->warn("recv failed error={}", LogQuote(e.what()));
      return false;
    }
    if (!got) return false;
    bool more = first.more();
    frames.push_back(std::move(first));
    std::size_t count = 1;
    while (more) {
      zmq::message_t part;
      try {
        if (!sock.recv(part, zmq::recv_flags::none)) break;
      } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) continue;
        break;
      }
      more = part.more();
      ++count;
      if (count <= s_.max_frames) frames.push_back(std::move(part));
    }
    const std::string peer = frames[0].to_string();
    const char* side = is_frontend ? "frontend" : "backend";
    if (count > s_.max_frames) {
      // PROTOCOL.md 5: no reply, and that peer's connection is dropped. ZeroMQ gives no API to
      // close one ROUTER peer, so shut down the TCP/IPC connection it came in on: ZeroMQ sees it
      // close and forgets the peer; everyone else is unaffected.
      log_->warn("dropping peer: too many frames side={} peer={} frames={}", side, Printable(peer), count);
      // The routing-id frame is made up by the ROUTER; the next one came off the connection.
      const int fd = frames.size() > 1 ? SourceFd(frames[1]) : -1;
      if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
      if (!is_frontend) core_->OnWorkerMessage(peer, msg::Disconnect{"dropped: too many frames"}, now);
      return true;
    }
    if (frames.size() != 2) {
      SendError(sock, peer, 0, ErrorKind::kBadRequest,
                "expected 1 frame (the envelope) after the routing id, got " + std::to_string(frames.size() - 1));
      return true;
    }
    const zmq::message_t& payload = frames[1];
    if (payload.size() > s_.max_frame_bytes) {
      SendError(sock, peer, 0, ErrorKind::kTooLarge,
                "frame of " + std::to_string(payload.size()) + " bytes exceeds the limit of " +
                    std::to_string(s_.max_frame_bytes) + " bytes");
      return true;
    }
    auto decoded = msg::Decode(std::string_view(static_cast<const char*>(payload.data()), payload.size()), limits_);
    if (!decoded.ok()) {
      log_->debug("undecodable message side={} peer={} error={}", side, Printable(peer),
                  LogQuote(decoded.error().message));
      SendRaw(sock, peer, msg::EncodeError(decoded.error()));
      return true;
    }
    Envelope& env = decoded.value();
    if (std::holds_alternative<msg::ErrorReply>(env.body)) {
      log_->warn("error from peer side={} peer={} message={}", side, Printable(peer),
                 LogQuote(std::get<msg::ErrorReply>(env.body).message));
      return true;
    }
    if (is_frontend && !limiter_.Allow(peer, now)) {
      SendError(sock, peer, env.request_id, ErrorKind::kUnavailable,
                "rate limited: over " + std::to_string(static_cast<long long>(s_.request_rate)) +
                    " requests per second on this connection; try again later");
      return true;
    }
    if (auth_ && !Authorize(sock, is_frontend, peer, env, zmq_msg_gets(payload.handle(), "User-Id"), now)) return true;
    try {
      if (is_frontend) {
        HandleFrontend(peer, env, now);
      } else {
        HandleBackend(peer, env, now);
      }
    } catch (const std::exception& e) {
      // A bug, not an input problem: log it loudly and keep serving everyone else.
      log_->error("internal error handling message side={} type={} error={}", side, msg::TypeName(env.body),
                  LogQuote(e.what()));
    }
    return true;
  }

  // CURVE: the ZAP handler put the key id as User-Id on every message of the connection. A
  // request outside the key's grant gets not-authorized and changes nothing.
  bool Authorize(zmq::socket_t& sock, bool is_frontend, const std::string& peer, const Envelope& env,
                 const char* user_id, std::int64_t now) {
    const std::string key_id = user_id ? user_id : "";
    auto key = auth_->Find(key_id);
    std::optional<std::string> refused;
    if (!key) {
      refused = "key '" + key_id + "' is not (or no longer) authorized";
    } else if (is_frontend) {
      refused = AuthorizeFrontend(*key, env.body, s_.core.dp_groups);
    } else {
      // A routing id taken over by another key (ROUTER_HANDOVER) is the old worker lost: its jobs
      // are requeued, never handed to the new key's connection.
      auto [it, fresh] = backend_keys_.try_emplace(peer, key->id);
      if (!fresh && it->second != key->id) {
        log_->warn("worker routing id taken over by another key peer={} old_key={} new_key={}", Printable(peer),
                   it->second, key->id);
        core_->OnWorkerMessage(peer, msg::Disconnect{"routing id taken over by another key"}, now);
        worker_peers_.erase(peer);
        it->second = key->id;
      }
      if (std::holds_alternative<msg::Disconnect>(env.body)) backend_keys_.erase(peer);
      refused = AuthorizeBackend(*key, env.body);
    }
    if (!refused) return true;
    log_->warn("request refused: not authorized side={} key={} type={} reason={}", is_frontend ? "frontend" : "backend",
               LogQuote(key_id), msg::TypeName(env.body), LogQuote(*refused));
    SendError(sock, peer, env.request_id, ErrorKind::kNotAuthorized, *refused);
    return false;
  }

  void HandleFrontend(const std::string& peer, Envelope& env, std::int64_t now) {
    Body& b = env.body;
    if (IsFrontendMutation(b)) {
      Body reply;
      if (auto* r = std::get_if<msg::SubmitRequest>(&b)) {
        reply = core_->Submit(*r, now);
      } else if (auto* r2 = std::get_if<msg::RetryRequest>(&b)) {
        reply = core_->Retry(*r2, now);
      } else if (auto* r3 = std::get_if<msg::CancelRequest>(&b)) {
        reply = core_->Cancel(*r3, now);
      } else if (auto* r4 = std::get_if<msg::VerifyRequest>(&b)) {
        reply = core_->Verify(*r4, now);
      }
      // Sent after the round's commit: a publisher gets its ids only once they are durable.
      accum_.replies.push_back({peer, env.request_id, std::move(reply), std::chrono::steady_clock::now()});
      return;
    }
    if (IsFrontendQuery(b)) {
      accum_.queries.push_back({peer, env.request_id, std::move(b)});
      return;
    }
    SendError(frontend_, peer, env.request_id, ErrorKind::kUnknownType,
              std::string("'") + msg::TypeName(b) + "' is not a frontend request");
  }

  void HandleBackend(const std::string& peer, Envelope& env, std::int64_t now) {
    if (!IsWorkerMessage(env.body)) {
      SendError(backend_, peer, 0, ErrorKind::kUnknownType,
                std::string("'") + msg::TypeName(env.body) + "' is not a worker message");
      return;
    }
    if (auto* reg = std::get_if<msg::Register>(&env.body)) {
      log_->info("worker registered worker={} dps={} capacity={}", LogQuote(reg->name), reg->dps.size(),
                 reg->capacity);
      worker_peers_.insert(peer);
    }
    if (std::holds_alternative<msg::Disconnect>(env.body)) worker_peers_.erase(peer);
    obs_.OnWorkerMessage(peer, env.body);
    core_->OnWorkerMessage(peer, std::move(env.body), now);
  }

  // Takes everything the Core changed and queued since the last commit and commits it: on the
  // commit thread when there is one (FinishCommit delivers the outputs), else inline.
  Status StartCommit() {
    auto out = std::make_unique<Outputs>(std::move(accum_));
    accum_ = Outputs{};
    // Vectors of delivered outputs, empty but with their capacity: no regrowth every round.
    accum_.replies.swap(spare_replies_);
    accum_.queries.swap(spare_queries_);
    out->batch = core_->TakeBatch();
    out->outbox = core_->TakeWorkerOutbox();
    out->progress = core_->TakeEvents();
    // Stats answer from the Core's counters as of this batch: exactly what this commit makes
    // durable (the Core may be rounds ahead by the time the answer goes out).
    for (auto& q : out->queries) {
      if (std::holds_alternative<msg::StatsRequest>(q.body)) q.body = CoreStats(*core_);
    }
    if (out->batch.empty()) {
      Deliver(*out);
      return Status::Ok();
    }
    out->batch.encoded_events.reserve(out->batch.events.size());
    for (const auto& e : out->batch.events) {
      out->batch.encoded_events.push_back(msg::Encode(Envelope{msg::kProtocolVersion, 0, e}));
    }
    ++m_.commits;
    m_.committed_jobs += out->batch.jobs.size();
    if (!commit_thread_) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::int64_t cpu0 = ThreadCpuNs();
      Status st = store_->Commit(out->batch);
      const std::uint64_t ns = Ns(std::chrono::steady_clock::now() - t0);
      m_.commit_ns += ns;
      commit_hist_.Add(ns);
      m_.commit_cpu_ns += static_cast<std::uint64_t>(ThreadCpuNs() - cpu0);
      if (!st.ok()) return CommitFailed(*out, st);
      obs_.OnCommitted(m_.commit_ns, out->batch);
      Deliver(*out);
      return Status::Ok();
    }
    inflight_ = std::move(out);
    core_->SetInFlight(&inflight_->batch);
    commit_thread_->Submit(&inflight_->batch);
    return Status::Ok();
  }

  Status FinishCommit() {
    Status st = commit_thread_->TakeResult();
    std::unique_ptr<Outputs> out = std::move(inflight_);
    core_->SetInFlight(nullptr);
    if (!st.ok()) return CommitFailed(*out, st);
    const std::uint64_t total_ns = commit_thread_->commit_ns();
    commit_hist_.Add(total_ns - last_commit_total_ns_);
    last_commit_total_ns_ = total_ns;
    obs_.OnCommitted(total_ns, out->batch);
    Deliver(*out);
    return Status::Ok();
  }

  // Memory is ahead of the store now: refuse what waited and stop; a restart reloads the last
  // committed state (nothing acknowledged is lost, nothing unstored was promised).
  Status CommitFailed(Outputs& out, const Status& st) {
    log_->error("store commit failed, stopping error={}", LogQuote(st.error().message));
    for (auto* list : {&out.replies, &accum_.replies}) {
      for (auto& p : *list) {
        SendError(frontend_, p.peer, p.request_id, ErrorKind::kUnavailable, "store failure: " + st.error().message);
      }
    }
    return st;
  }

  // Sends what waited for a commit: replies, query answers (read after the commit), messages to
  // workers (dispatches, result acks...) and events.
  void Deliver(Outputs& out) {
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& p : out.replies) {
      if (std::holds_alternative<msg::SubmitReply>(p.body)) {
        obs_.OnSubmitAcked(t0 - p.received);
        ack_hist_.Add(Ns(t0 - p.received));
      }
      SendEnvelope(frontend_, p.peer, Envelope{msg::kProtocolVersion, p.request_id, std::move(p.body)});
    }
    for (auto& q : out.queries) {
      Body reply = AnswerQuery(q.body, reads(), *core_, s_);
      SendEnvelope(frontend_, q.peer, Envelope{msg::kProtocolVersion, q.request_id, std::move(reply)});
    }
    for (auto& w : out.outbox) {
      if (std::holds_alternative<msg::Disconnect>(w.body)) worker_peers_.erase(w.peer);
      obs_.OnSentToWorker(w.body);
      SendEnvelope(backend_, w.peer, Envelope{msg::kProtocolVersion, 0, std::move(w.body)});
    }
    const auto& events = out.batch.events;
    for (std::size_t i = 0; i < events.size(); ++i) {
      const msg::Event& e = events[i];
      if (log_->should_log(spdlog::level::debug)) {
        log_->debug("job state seq={} job={} dp={} package={} version={} state={}", e.seq, e.job.id, e.job.dp,
                    LogQuote(e.job.package), e.job.version, msg::ToString(e.job.state));
      }
      Publish(e, i < out.batch.encoded_events.size() ? out.batch.encoded_events[i]
                                                      : msg::Encode(Envelope{msg::kProtocolVersion, 0, e}));
    }
    for (auto& e : out.progress) Publish(e, msg::Encode(Envelope{msg::kProtocolVersion, 0, e}));
    out.replies.clear();
    if (out.replies.capacity() > spare_replies_.capacity()) out.replies.swap(spare_replies_);
    out.queries.clear();
    if (out.queries.capacity() > spare_queries_.capacity()) out.queries.swap(spare_queries_);
    m_.send_ns += Ns(std::chrono::steady_clock::now() - t0);
  }

  Store& reads() { return reader_ ? *reader_ : *store_; }

  void Publish(const msg::Event& e, const std::string& payload) {
    const std::string topic = msg::TopicFor(e.job.dp, e.job.package);
    try {
      // PUB never blocks: a subscriber over its high-water mark misses events and catches up
      // with events-since (PROTOCOL.md 9).
      pub_.send(zmq::buffer(topic), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      pub_.send(zmq::buffer(payload), zmq::send_flags::dontwait);
      obs_.OnPublished(e, true);
    } catch (const zmq::error_t& err) {
      obs_.OnPublished(e, false);
      log_->warn("publish failed error={}", LogQuote(err.what()));
    }
  }

  void SendError(zmq::socket_t& sock, const std::string& peer, std::uint64_t request_id, ErrorKind kind,
                 std::string message) {
    log_->debug("error reply peer={} kind={} message={}", Printable(peer), msg::ToString(kind), LogQuote(message));
    SendEnvelope(sock, peer, msg::ErrorEnvelope(request_id, kind, std::move(message)));
  }

  void SendEnvelope(zmq::socket_t& sock, const std::string& peer, Envelope env) {
    std::string payload = msg::Encode(env);
    if (payload.size() > s_.max_frame_bytes) {
      if (auto* jobs = std::get_if<msg::JobsReply>(&env.body)) {
        // Cut long listings to what fits the application limit.
        while (payload.size() > s_.max_frame_bytes && !jobs->jobs.empty()) {
          jobs->jobs.resize(jobs->jobs.size() / 2);
          payload = msg::Encode(env);
        }
      }
    }
    SendRaw(sock, peer, payload);
  }

  void SendRaw(zmq::socket_t& sock, const std::string& peer, const std::string& payload) {
    try {
      if (!sock.send(zmq::buffer(peer), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        log_->warn("send dropped (peer queue full) peer={}", Printable(peer));
        return;
      }
      sock.send(zmq::buffer(payload), zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
      // EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY); liveness handles workers.
      log_->debug("send failed peer={} error={}", Printable(peer), LogQuote(e.what()));
    }
  }

  BrokerSettings s_;
  std::unique_ptr<Store> store_;   // writes (used by the commit thread when there is one)
  std::unique_ptr<Store> reader_;  // optional second connection for reads on the loop thread
  std::unique_ptr<CommitThread> commit_thread_;
  std::unique_ptr<RowWarmer> warmer_;  // reads parked jobs' rows ahead of their due time
  std::shared_ptr<spdlog::logger> log_;
  msg::DecodeLimits limits_;
  std::unique_ptr<Core> core_;
  zmq::context_t ctx_;
  zmq::socket_t frontend_;
  zmq::socket_t backend_;
  zmq::socket_t pub_;
  std::vector<zmq::message_t> frames_;  // ReadOne's frames (kept for its capacity)
  Outputs accum_;                  // waiting for the next commit
  std::vector<Pending> spare_replies_, spare_queries_;  // emptied by Deliver, capacity kept
  std::unique_ptr<Outputs> inflight_;  // waiting for the commit in progress
  std::set<std::string> worker_peers_;
  LoopMetrics m_;
  MicrosHistogram commit_hist_, ack_hist_;
  std::uint64_t last_commit_total_ns_ = 0;  // commit_thread_->commit_ns() at the last commit
  Observability obs_;  // metrics, snapshots and the HTTP endpoint (its threads never touch the above)
  int io_thread_search_rounds_ = 100;  // MarkZmqIoThreads tries left; 0 once found
  std::unique_ptr<BrokerAuth> auth_;  // CURVE + ZAP; null without [security]. Stops before ctx_.
  std::map<std::string, std::string> backend_keys_;  // backend routing id -> key id (CURVE)
  RateLimiter limiter_{s_.request_rate, s_.request_burst};
};

Broker::Broker(BrokerSettings settings, std::unique_ptr<Store> store, std::unique_ptr<Store> reader)
    : impl_(std::make_unique<Impl>(std::move(settings), std::move(store), std::move(reader))) {}

Broker::~Broker() = default;

Status Broker::Start() { return impl_->Start(endpoints_); }

Status Broker::Run(int stop_fd) { return impl_->Run(stop_fd); }

LoopMetrics Broker::metrics() const { return impl_->metrics(); }

}  // namespace despool::broker
