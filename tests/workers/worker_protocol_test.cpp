// despool-worker against a scripted broker (a ROUTER in the test): the backend dialogue of
// PROTOCOL.md section 8 as the worker speaks it.
#include <gtest/gtest.h>

#include "workers/worker_harness.h"

namespace despool::workertest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A fake broker backend: receives [peer][envelope], sends heartbeats to the worker every
// `interval` while the test waits, so the worker never declares it dead.
class FakeBroker {
 public:
  FakeBroker() {
    sock_.set(zmq::sockopt::linger, 0);
    sock_.set(zmq::sockopt::router_mandatory, 1);
    sock_.bind("tcp://127.0.0.1:*");
    endpoint_ = sock_.get(zmq::sockopt::last_endpoint);
  }
  const std::string& endpoint() const { return endpoint_; }
  const std::string& peer() const { return peer_; }
  milliseconds interval{100};

  void Send(msg::Body body) {
    const std::string payload = msg::Encode(msg::Envelope{msg::kProtocolVersion, 0, std::move(body)});
    sock_.send(zmq::buffer(peer_), zmq::send_flags::sndmore);
    sock_.send(zmq::buffer(payload), zmq::send_flags::none);
    last_sent_ = Clock::now();
  }

  // The next message from the worker for which `want` holds (others are passed to `seen`), or
  // nullopt after `within`.
  std::optional<msg::Body> Next(const std::function<bool(const msg::Body&)>& want, milliseconds within) {
    const auto deadline = Clock::now() + within;
    while (Clock::now() < deadline) {
      if (!peer_.empty() && registered_ && Clock::now() - last_sent_ >= interval) {
        try {
          Send(msg::Heartbeat{});
        } catch (const zmq::error_t&) {
          last_sent_ = Clock::now();  // the worker is gone (EHOSTUNREACH): nothing to keep alive
        }
      }
      std::vector<zmq_pollitem_t> items{{sock_.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, milliseconds(10));
      if (!(items[0].revents & ZMQ_POLLIN)) continue;
      zmq::message_t id, frame;
      (void)sock_.recv(id);
      (void)sock_.recv(frame);
      peer_ = id.to_string();
      auto decoded = msg::Decode(std::string_view(static_cast<const char*>(frame.data()), frame.size()));
      if (!decoded.ok()) throw std::runtime_error("worker sent an undecodable frame: " + decoded.error().message);
      msg::Body body = std::move(decoded.value().body);
      log.push_back(msg::TypeName(body));
      if (want(body)) return body;
    }
    return std::nullopt;
  }
  template <typename T>
  std::optional<T> NextOf(milliseconds within, const std::function<bool(const T&)>& extra = nullptr) {
    auto b = Next(
        [&](const msg::Body& body) {
          auto* t = std::get_if<T>(&body);
          return t != nullptr && (!extra || extra(*t));
        },
        within);
    if (!b) return std::nullopt;
    return std::get<T>(*b);
  }

  // Waits for register and acknowledges it.
  std::optional<msg::Register> Accept(milliseconds within = milliseconds(10000)) {
    auto reg = NextOf<msg::Register>(within);
    if (reg) {
      registered_ = true;
      Send(msg::RegisterAck{static_cast<std::uint32_t>(interval.count())});
    }
    return reg;
  }

  std::vector<std::string> log;

 private:
  zmq::context_t ctx_{1};
  zmq::socket_t sock_{ctx_, zmq::socket_type::router};
  std::string endpoint_;
  std::string peer_;
  bool registered_ = false;
  Clock::time_point last_sent_{};
};

class WorkerProtocolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (BinDir().empty() || !fs::exists(BinDir() + "/despool-worker")) GTEST_SKIP() << "no despool-worker";
    dp_ = tmp_ / "dp";
    fs::create_directories(dp_);
  }
  std::unique_ptr<Process> Start(const std::vector<std::string>& extra = {}) {
    return StartWorker(tmp_.path(), broker_.endpoint(), "pw", {"lab1=" + dp_}, extra);
  }
  msg::Dispatch Job(const std::string& id, const std::string& pkg, std::uint64_t version, const std::string& src) {
    msg::Dispatch d;
    d.job_id = id;
    d.attempt = 1;
    d.dp = "lab1";
    d.package = pkg;
    d.version = version;
    d.source = src;
    return d;
  }
  static auto ResultFor(const std::string& id) {
    return [id](const msg::JobResult& r) { return r.job_id == id; };
  }

  TempDir tmp_;
  std::string dp_;
  FakeBroker broker_;
};

TEST_F(WorkerProtocolTest, RegistersThenHeartbeatsWithMetrics) {
  auto w = Start({"--concurrency", "3"});
  auto reg = broker_.Accept();
  ASSERT_TRUE(reg) << w->log();
  EXPECT_EQ(reg->name, "pw");
  EXPECT_EQ(reg->dps, std::vector<std::string>{"lab1"});
  EXPECT_EQ(reg->capacity, 3u);
  // Heartbeats at the interval from register-ack (100 ms): several within a second.
  int beats = 0;
  const auto t0 = Clock::now();
  while (beats < 5 && Clock::now() - t0 < seconds(2)) {
    auto hb = broker_.NextOf<msg::Heartbeat>(milliseconds(500));
    ASSERT_TRUE(hb) << w->log();
    EXPECT_TRUE(hb->metrics.has_value());
    ++beats;
  }
  EXPECT_EQ(beats, 5);
  EXPECT_LT(Clock::now() - t0, milliseconds(1500));
  EXPECT_EQ(w->Terminate(), 0);
  // Shutdown says goodbye.
  EXPECT_TRUE(broker_.NextOf<msg::Disconnect>(milliseconds(2000)));
}

TEST_F(WorkerProtocolTest, KeepsResultUntilAckedAndReportsMetrics) {
  auto w = Start();
  ASSERT_TRUE(broker_.Accept()) << w->log();
  const std::string src = tmp_ / "src";
  MakeSource(src, 3, 4096, "v1");
  broker_.Send(Job("job-1", "app", 1, src));
  auto first = broker_.NextOf<msg::JobResult>(seconds(10), ResultFor("job-1"));
  ASSERT_TRUE(first) << w->log();
  EXPECT_EQ(first->outcome, msg::Outcome::kApplied);
  EXPECT_EQ(first->attempt, 1u);
  ASSERT_TRUE(first->stats.has_value());
  EXPECT_EQ(first->stats->files_total, 3u);
  EXPECT_EQ(first->installed_version, std::optional<std::uint64_t>(1));
  // Not acknowledged: resent (every heartbeat interval).
  auto again = broker_.NextOf<msg::JobResult>(milliseconds(1000), ResultFor("job-1"));
  ASSERT_TRUE(again) << "unacknowledged result not resent";
  EXPECT_EQ(*again, *first);
  broker_.Send(msg::ResultAck{"job-1", 1});
  // Acknowledged: not sent again (a result already in flight may still arrive once).
  (void)broker_.NextOf<msg::JobResult>(milliseconds(150), ResultFor("job-1"));
  EXPECT_FALSE(broker_.NextOf<msg::JobResult>(milliseconds(500), ResultFor("job-1")));
  auto hb = broker_.NextOf<msg::Heartbeat>(milliseconds(1000));
  ASSERT_TRUE(hb && hb->metrics);
  EXPECT_EQ(hb->metrics->refreshes, 1u);
  EXPECT_EQ(hb->metrics->bytes_copied, 3u * 4096);
  EXPECT_EQ(w->Terminate(), 0);
}

TEST_F(WorkerProtocolTest, OneJobPerPackageAtATimeAndCancelLeavesLiveUntouched) {
  auto w = Start({"--max-bytes-per-second", "2097152", "--concurrency", "2"});
  ASSERT_TRUE(broker_.Accept()) << w->log();
  const std::string big = tmp_ / "big", small = tmp_ / "small";
  MakeSource(big, 1, 4u << 20, "big");   // ~1.5 s at 2 MiB/s after the 1 MiB burst
  MakeSource(small, 1, 100, "small");
  // Two jobs for the same (DP, package): the second must wait for the first.
  broker_.Send(Job("a-1", "same", 1, big));
  broker_.Send(Job("a-2", "same", 2, small));
  // While the first runs, the second waits in the worker (not in the engine's lock): one running.
  auto hb = broker_.NextOf<msg::Heartbeat>(seconds(2), [](const msg::Heartbeat& h) { return h.running > 0; });
  ASSERT_TRUE(hb) << w->log();
  EXPECT_EQ(hb->running, 1u);
  auto first = broker_.NextOf<msg::JobResult>(seconds(20), [](const msg::JobResult&) { return true; });
  ASSERT_TRUE(first) << w->log();
  EXPECT_EQ(first->job_id, "a-1") << "the second job of a package finished before the first";
  EXPECT_EQ(first->outcome, msg::Outcome::kApplied);
  broker_.Send(msg::ResultAck{first->job_id, first->attempt});
  auto second = broker_.NextOf<msg::JobResult>(seconds(20), ResultFor("a-2"));
  ASSERT_TRUE(second);
  EXPECT_EQ(second->outcome, msg::Outcome::kApplied);
  broker_.Send(msg::ResultAck{"a-2", 1});
  EXPECT_EQ(Snapshot(dp_ + "/same"), Snapshot(small));

  // Progress is reported while copying (throttled), and a cancel sent then stops the refresh
  // before the switch. The copy takes ~2 s at 2 MiB/s: the second report must come during it.
  broker_.Send(Job("c-1", "same", 3, big));
  std::vector<msg::ProgressReport> reports;
  while (reports.size() < 2) {
    auto p = broker_.NextOf<msg::ProgressReport>(seconds(10));
    ASSERT_TRUE(p) << w->log();
    EXPECT_EQ(p->job_id, "c-1");
    reports.push_back(*p);
  }
  const auto t0 = Clock::now();
  auto third = broker_.NextOf<msg::ProgressReport>(seconds(10));
  ASSERT_TRUE(third) << w->log();
  EXPECT_GE(Clock::now() - t0, milliseconds(200)) << "progress is throttled to about 4 per second";
  const msg::Progress& during = third->progress;
  EXPECT_GT(during.bytes_done, 0u) << "no progress reported while copying";
  ASSERT_LT(during.bytes_done, during.bytes_total) << "the copy was over before the cancel";
  broker_.Send(msg::CancelJob{"c-1", 1});
  auto cancelled = broker_.NextOf<msg::JobResult>(seconds(10), ResultFor("c-1"));
  ASSERT_TRUE(cancelled) << w->log();
  EXPECT_EQ(cancelled->outcome, msg::Outcome::kCancelled);
  broker_.Send(msg::ResultAck{"c-1", 1});
  EXPECT_EQ(Snapshot(dp_ + "/same"), Snapshot(small)) << "a cancelled refresh changed the live tree";
  EXPECT_EQ(w->Terminate(), 0);
}

TEST_F(WorkerProtocolTest, UnknownDpIsAPermanentErrorAndDisconnectMeansRegisterAgain) {
  auto w = Start();
  ASSERT_TRUE(broker_.Accept()) << w->log();
  msg::Dispatch d = Job("x-1", "app", 1, tmp_ / "src");
  d.dp = "elsewhere";
  broker_.Send(d);
  auto r = broker_.NextOf<msg::JobResult>(seconds(10), ResultFor("x-1"));
  ASSERT_TRUE(r) << w->log();
  EXPECT_EQ(r->outcome, msg::Outcome::kPermanentError);
  ASSERT_TRUE(r->error.has_value());
  EXPECT_NE(r->error->find("elsewhere"), std::string::npos);
  // "I do not know you": the worker registers again and resends what is unacknowledged.
  broker_.Send(msg::Disconnect{"unknown worker: register again"});
  ASSERT_TRUE(broker_.Accept(seconds(5))) << w->log();
  EXPECT_TRUE(broker_.NextOf<msg::JobResult>(seconds(2), ResultFor("x-1")));
  broker_.Send(msg::ResultAck{"x-1", 1});
  EXPECT_EQ(w->Terminate(), 0);
}

TEST_F(WorkerProtocolTest, SilentBrokerMeansReconnectWithANewRegistration) {
  auto w = Start();
  ASSERT_TRUE(broker_.Accept()) << w->log();
  // Stop answering: after 3 intervals (300 ms) of silence the worker reconnects (after a 1 s
  // backoff) and registers again.
  const auto t0 = Clock::now();
  FakeBroker& b = broker_;
  std::optional<msg::Register> again;
  {
    // Receive without sending heartbeats: a fresh FakeBroker state is not needed, only silence.
    b.interval = milliseconds(60'000);
    again = b.NextOf<msg::Register>(seconds(10));
  }
  ASSERT_TRUE(again) << w->log();
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, milliseconds(1000)) << "reconnect without backoff";
  EXPECT_EQ(again->name, "pw");
  EXPECT_EQ(w->Terminate(), 0);
}

}  // namespace
}  // namespace despool::workertest
