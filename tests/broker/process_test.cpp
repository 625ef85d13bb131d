// The real despool-broker binary on loopback, driven by scripted clients and workers.
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <sys/utsname.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "despool/broker/store.h"
#include "despool/messages/topics.h"
#include "process_harness.h"

namespace despool::broker {
namespace {

using msg::JobState;
using msg::Outcome;
using namespace testing;

constexpr const char* kConfig = R"(
[dps]
names = ["a", "b"]
[dp_groups]
ab = ["a", "b"]
[heartbeat]
interval = "100ms"
liveness = 10
orphan_grace = "1s"
[retry]
base = "30s"
max = "1h"
[limits]
max_frame_bytes = 1048576
max_message_bytes = 2097152
max_frames = 4
)";

// Every scenario runs with commits on the commit thread (pipelined, the default) and inline.
class BrokerProcessTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (BinDir().empty()) GTEST_SKIP() << "DESPOOL_BIN_DIR not set";
    const std::string config =
        std::string(kConfig) + "[store_options]\ncommit_thread = " + (GetParam() ? "true" : "false") + "\n";
    broker_ = std::make_unique<BrokerProcess>(dir_.path(), config);
    ASSERT_TRUE(broker_->Start()) << broker_->Log();
  }
  void TearDown() override {
    if (broker_) {
      const int rc = broker_->Stop();
      if (!HasFailure()) {
        EXPECT_EQ(rc, 0) << "SIGTERM must stop the broker cleanly\n" << broker_->Log();
      }
    }
  }
  std::unique_ptr<Client> NewClient() { return std::make_unique<Client>(ctx_, broker_->frontend); }
  std::unique_ptr<TestWorker> NewWorker(const std::string& name) {
    return std::make_unique<TestWorker>(ctx_, broker_->backend, name);
  }

  TempDir dir_;
  zmq::context_t ctx_{1};
  std::unique_ptr<BrokerProcess> broker_;
};

TEST_P(BrokerProcessTest, SubmitIsAcknowledgedOnlyOnceStored) {
  auto client = NewClient();
  // A second connection to the same database sees every acknowledged job at ack time.
  auto reader = OpenSqliteStore(broker_->store_path(), {});
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  for (int i = 0; i < 30; ++i) {
    auto jobs = client->Submit(Refresh("pkg" + std::to_string(i), 1, {"a", "b"}));
    ASSERT_EQ(jobs.size(), 2u);
    for (const auto& j : jobs) {
      auto stored = (*reader)->GetJob(j.id);
      ASSERT_TRUE(stored.ok());
      ASSERT_TRUE(stored->has_value()) << "acknowledged job " << j.id << " is not in the store";
      EXPECT_EQ((**stored).info.state, JobState::kQueued);
      EXPECT_EQ((**stored).info.dp, j.dp);
    }
  }
}

TEST_P(BrokerProcessTest, UnknownDpAndUnknownJobAreRefused) {
  auto client = NewClient();
  msg::SubmitRequest r;
  r.instructions.push_back(Refresh("pkg", 1, {"a", "mystery"}));
  auto reply = client->Call(r);
  ASSERT_TRUE(reply);
  auto* err = std::get_if<msg::ErrorReply>(&*reply);
  ASSERT_NE(err, nullptr);
  EXPECT_EQ(err->kind, msg::ErrorKind::kUnknownDp);
  EXPECT_NE(err->message.find("mystery"), std::string::npos);
  msg::StatusRequest s;
  s.job_id = "nope-1";
  auto st = client->Call(s);
  ASSERT_TRUE(st);
  EXPECT_EQ(std::get<msg::ErrorReply>(*st).kind, msg::ErrorKind::kNotFound);
  // Nothing was stored by the refused submit.
  auto all = client->Call(msg::StatusRequest{});
  ASSERT_TRUE(all);
  EXPECT_TRUE(std::get<msg::JobsReply>(*all).jobs.empty());
}

TEST_P(BrokerProcessTest, DispatchDeferralReleaseHintAndEvents) {
  zmq::socket_t sub(ctx_, zmq::socket_type::sub);
  sub.set(zmq::sockopt::linger, 0);
  sub.set(zmq::sockopt::subscribe, msg::DpPrefix("w"));
  sub.connect(broker_->events);
  auto worker = NewWorker("w1");
  ASSERT_TRUE(worker->Register({"w"}, 2));  // "w" becomes known through the registration
  auto client = NewClient();
  auto jobs = client->Submit(Refresh("tool", 7, {"w"}));
  ASSERT_EQ(jobs.size(), 1u);
  ASSERT_TRUE(worker->PumpUntil([&] { return !worker->dispatches.empty(); }, 5s));
  auto d = worker->dispatches.front();
  worker->dispatches.clear();
  EXPECT_EQ(d.job_id, jobs[0].id);
  EXPECT_EQ(d.package, "tool");
  EXPECT_EQ(d.version, 7u);
  worker->Result(d, Outcome::kDeferred, {"bin/tool.exe"});
  ASSERT_TRUE(worker->PumpUntil([&] { return !worker->acks.empty(); }, 5s));
  auto job = client->Status(jobs[0].id);
  ASSERT_TRUE(job);
  EXPECT_EQ(job->state, JobState::kDeferred);
  EXPECT_EQ(job->attempts, 1u);
  EXPECT_EQ(job->in_use, std::vector<std::string>{"bin/tool.exe"});
  ASSERT_TRUE(job->next_attempt_at_ms);
  // The release hint brings the retry forward (the timer says 30 s).
  const auto hinted = Clock::now();
  worker->Send(msg::ReleaseHint{d.job_id, d.attempt});
  ASSERT_TRUE(worker->PumpUntil([&] { return !worker->dispatches.empty(); }, 5s));
  EXPECT_LT(Clock::now() - hinted, 2s);
  auto d2 = worker->dispatches.front();
  EXPECT_EQ(d2.attempt, d.attempt + 1);
  worker->Result(d2, Outcome::kApplied);
  ASSERT_TRUE(WaitFor([&] {
    auto j = client->Status(jobs[0].id);
    return j && j->state == JobState::kApplied;
  }, 5s));
  // Stored events replay the whole history in order.
  msg::EventsSinceRequest since;
  auto ev = client->Call(since);
  ASSERT_TRUE(ev);
  auto& events = std::get<msg::EventsReply>(*ev).events;
  std::vector<JobState> states;
  for (const auto& e : events) {
    if (e.job.id == jobs[0].id) states.push_back(e.job.state);
  }
  EXPECT_EQ(states, (std::vector<JobState>{JobState::kQueued, JobState::kRunning, JobState::kDeferred,
                                           JobState::kQueued, JobState::kRunning, JobState::kApplied}));
  // Live events arrive on the job's topic; the last is the applied one.
  bool got_applied = false;
  const auto deadline = Clock::now() + 5s;
  while (!got_applied && Clock::now() < deadline) {
    std::vector<zmq_pollitem_t> items = {{sub.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 100ms);
    zmq::message_t topic, body;
    if (!sub.recv(topic, zmq::recv_flags::dontwait)) continue;
    ASSERT_TRUE(topic.more());
    ASSERT_TRUE(sub.recv(body));
    EXPECT_EQ(topic.to_string(), msg::TopicFor("w", "tool"));
    auto env = msg::Decode(body.to_string_view());
    ASSERT_TRUE(env.ok());
    auto& e = std::get<msg::Event>(env.value().body);
    if (e.kind == msg::EventKind::kState && e.job.state == JobState::kApplied) got_applied = true;
  }
  EXPECT_TRUE(got_applied);
}

TEST_P(BrokerProcessTest, KillNineLosesNothingAcknowledged) {
  auto worker = NewWorker("w1");
  ASSERT_TRUE(worker->Register({"a"}, 2));
  auto client = NewClient();
  const auto running = client->Submit(Refresh("run", 1, {"a"}));
  const auto deferred = client->Submit(Refresh("def", 1, {"a"}));
  ASSERT_TRUE(worker->PumpUntil([&] { return worker->dispatches.size() == 2; }, 5s));
  msg::Dispatch run_d, def_d;
  for (const auto& d : worker->dispatches) (d.job_id == running[0].id ? run_d : def_d) = d;
  worker->Result(def_d, Outcome::kDeferred, {"f"});
  ASSERT_TRUE(worker->PumpUntil([&] { return !worker->acks.empty(); }, 5s));
  const auto queued = client->Submit(Refresh("q", 1, {"b"}));  // no worker serves b
  // A burst of pipelined submits, killed while in flight: every one acknowledged must survive.
  std::set<std::uint64_t> sent;
  for (int i = 0; i < 300; ++i) {
    msg::SubmitRequest r;
    r.instructions.push_back(Refresh("burst" + std::to_string(i), 1, {"b"}));
    const std::uint64_t id = client->NextId();
    client->Send(r, id);
    sent.insert(id);
  }
  std::vector<std::string> acked;
  while (acked.size() < 100) {
    auto e = client->Recv(5s);
    ASSERT_TRUE(e);
    if (auto* r = std::get_if<msg::SubmitReply>(&e->body)) acked.push_back(r->jobs.at(0).id);
  }
  broker_->Kill9();

  ASSERT_TRUE(broker_->Start()) << broker_->Log();
  auto client2 = NewClient();
  for (const auto& id : acked) {
    auto j = client2->Status(id);
    ASSERT_TRUE(j) << "acknowledged job " << id << " lost";
    EXPECT_EQ(j->state, JobState::kQueued);
  }
  auto r = client2->Status(running[0].id);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kRunning);
  auto df = client2->Status(deferred[0].id);
  ASSERT_TRUE(df);
  EXPECT_EQ(df->state, JobState::kDeferred);
  EXPECT_EQ(df->attempts, 1u);
  auto q = client2->Status(queued[0].id);
  ASSERT_TRUE(q);
  EXPECT_EQ(q->state, JobState::kQueued);
  // The worker reconnects to the new broker, registers again and resends its result.
  auto worker2 = NewWorker("w1");
  ASSERT_TRUE(worker2->Register({"a"}, 2));
  worker2->Result(run_d, Outcome::kApplied);
  ASSERT_TRUE(worker2->PumpUntil([&] { return !worker2->acks.empty(); }, 5s));
  auto done = client2->Status(running[0].id);
  ASSERT_TRUE(done);
  EXPECT_EQ(done->state, JobState::kApplied);
}

TEST_P(BrokerProcessTest, LostWorkerJobsAreRequeuedWithoutAnAttempt) {
  auto w1 = NewWorker("w1");
  ASSERT_TRUE(w1->Register({"a"}, 1));
  auto client = NewClient();
  auto jobs = client->Submit(Refresh("pkg", 1, {"a"}));
  ASSERT_TRUE(w1->PumpUntil([&] { return !w1->dispatches.empty(); }, 5s));
  const auto first = w1->dispatches.front();
  // w1 goes silent; w2 is healthy and gets the job once w1 is declared lost (10 x 100 ms).
  w1->silent = true;
  auto w2 = NewWorker("w2");
  ASSERT_TRUE(w2->Register({"a"}, 1));
  ASSERT_TRUE(w2->PumpUntil([&] { return !w2->dispatches.empty(); }, 5s));
  EXPECT_EQ(w2->dispatches.front().job_id, jobs[0].id);
  EXPECT_EQ(w2->dispatches.front().attempt, first.attempt + 1);
  auto j = client->Status(jobs[0].id);
  ASSERT_TRUE(j);
  EXPECT_EQ(j->state, JobState::kRunning);
  EXPECT_EQ(j->attempts, 0u);
  // w1's late result is acknowledged but stale.
  w1->Result(first, Outcome::kApplied);
  ASSERT_TRUE(w1->PumpUntil([&] { return !w1->acks.empty(); }, 5s));
  j = client->Status(jobs[0].id);
  EXPECT_EQ(j->state, JobState::kRunning);
  w2->Result(w2->dispatches.front(), Outcome::kUpToDate);
  ASSERT_TRUE(WaitFor([&] {
    auto x = client->Status(jobs[0].id);
    return x && x->state == JobState::kUpToDate;
  }, 5s));
}

TEST_P(BrokerProcessTest, OnePackagePerDpInFlightAcrossManyWorkers) {
  std::vector<std::unique_ptr<TestWorker>> workers;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(NewWorker("w" + std::to_string(i)));
    ASSERT_TRUE(workers.back()->Register({"a"}, 4));
  }
  auto client = NewClient();
  std::vector<std::string> ids;
  std::map<std::string, std::string> latest;  // package -> id of its highest version
  for (int v = 1; v <= 6; ++v) {
    for (int p = 0; p < 3; ++p) {
      const std::string pkg = "p" + std::to_string(p);
      auto j = client->Submit(Refresh(pkg, static_cast<std::uint64_t>(v), {"a"}));
      ASSERT_EQ(j.size(), 1u);
      ids.push_back(j[0].id);
      latest[pkg] = j[0].id;
    }
  }
  // Dispatches are held for one full pass over all workers before being answered, so a second
  // dispatch of the same package (to any worker) would be seen while the first is in flight.
  std::map<std::string, std::string> in_flight;  // package -> job id
  std::vector<std::pair<TestWorker*, msg::Dispatch>> held;
  std::mt19937 rng(1);
  const auto deadline = Clock::now() + 20s;
  while (Clock::now() < deadline) {
    for (auto& [w, d] : held) {
      bool cancelled = false;
      for (const auto& c : w->cancels) cancelled |= c.job_id == d.job_id;
      in_flight.erase(d.package);
      w->Result(d, cancelled || (rng() % 2) ? Outcome::kCancelled : Outcome::kApplied);
    }
    held.clear();
    for (auto& w : workers) {
      for (int i = 0; i < 3; ++i) w->PumpOnce(2ms);
      for (const auto& d : w->dispatches) {
        ASSERT_EQ(in_flight.count(d.package), 0u)
            << "two jobs of " << d.package << " in flight: " << in_flight[d.package] << " and " << d.job_id;
        in_flight[d.package] = d.job_id;
        held.push_back({w.get(), d});
      }
      w->dispatches.clear();
    }
    msg::StatusRequest all;
    all.limit = 0;
    auto reply = client->Call(all);
    ASSERT_TRUE(reply);
    bool all_terminal = held.empty();
    for (const auto& j : std::get<msg::JobsReply>(*reply).jobs) all_terminal &= msg::IsTerminal(j.state);
    if (all_terminal) break;
  }
  // Cancelled without an operator cancel means "worker gave up": requeued, so keep going until
  // every package's newest version ended applied.
  for (const auto& [pkg, id] : latest) {
    ASSERT_TRUE(WaitFor([&] {
      for (auto& w : workers) {
        w->PumpOnce(1ms);
        for (const auto& d : w->dispatches) w->Result(d, Outcome::kApplied);
        w->dispatches.clear();
      }
      auto j = client->Status(id);
      return j && j->state == JobState::kApplied;
    }, 20s)) << pkg;
  }
}

TEST_P(BrokerProcessTest, HostileFramesOnTheFrontend) {
  auto bad = NewClient();
  auto good = NewClient();
  // Garbage: an error reply.
  bad->SendRaw("\xc1 not msgpack at all");
  auto e = bad->Recv(5s);
  ASSERT_TRUE(e);
  EXPECT_EQ(std::get<msg::ErrorReply>(e->body).kind, msg::ErrorKind::kBadRequest);
  // Two frames after the routing id: bad-request.
  bad->SendFrames({"x", "y"});
  e = bad->Recv(5s);
  ASSERT_TRUE(e);
  EXPECT_EQ(std::get<msg::ErrorReply>(e->body).kind, msg::ErrorKind::kBadRequest);
  // A valid envelope of a backend type: unknown-type.
  bad->Send(msg::Heartbeat{}, 9);
  e = bad->Recv(5s);
  ASSERT_TRUE(e);
  EXPECT_EQ(std::get<msg::ErrorReply>(e->body).kind, msg::ErrorKind::kUnknownType);
  // Over the application limit (1 MiB here): too-large.
  bad->SendRaw(std::string(1'500'000, 'x'));
  e = bad->Recv(5s);
  ASSERT_TRUE(e);
  EXPECT_EQ(std::get<msg::ErrorReply>(e->body).kind, msg::ErrorKind::kTooLarge);
  // Over the hard cap (2 MiB here) and too many frames: dropped without a reply; others served.
  auto huge = NewClient();
  huge->SendRaw(std::string(3'000'000, 'x'));
  auto many = NewClient();
  many->SendFrames({"1", "2", "3", "4", "5"});
  auto s = good->Call(msg::StatsRequest{});
  ASSERT_TRUE(s) << broker_->Log();
  EXPECT_TRUE(std::holds_alternative<msg::StatsReply>(*s));
  EXPECT_FALSE(huge->Recv(300ms));
  EXPECT_FALSE(many->Recv(300ms));
  ASSERT_TRUE(WaitFor([&] { return broker_->Log().find("too many frames") != std::string::npos; }, 5s))
      << broker_->Log();
  auto s2 = good->Call(msg::StatsRequest{});
  ASSERT_TRUE(s2);
  EXPECT_TRUE(std::holds_alternative<msg::StatsReply>(*s2));
}

TEST_P(BrokerProcessTest, HostileFramesOnTheBackend) {
  auto good = NewWorker("good");
  ASSERT_TRUE(good->Register({"a"}, 1));
  auto bad = NewWorker("bad");
  bad->SendRaw("garbage");
  ASSERT_TRUE(bad->PumpUntil([&] { return !bad->errors.empty(); }, 5s));
  EXPECT_EQ(bad->errors[0].kind, msg::ErrorKind::kBadRequest);
  bad->SendRaw(std::string(1'500'000, 'x'));
  ASSERT_TRUE(bad->PumpUntil([&] { return bad->errors.size() == 2; }, 5s));
  EXPECT_EQ(bad->errors[1].kind, msg::ErrorKind::kTooLarge);
  bad->Send(msg::StatsRequest{});
  ASSERT_TRUE(bad->PumpUntil([&] { return bad->errors.size() == 3; }, 5s));
  EXPECT_EQ(bad->errors[2].kind, msg::ErrorKind::kUnknownType);
  auto huge = NewWorker("huge");
  huge->SendRaw(std::string(3'000'000, 'x'));
  auto many = NewWorker("many");
  many->SendFrames({"1", "2", "3", "4", "5", "6"});
  ASSERT_TRUE(WaitFor([&] { return broker_->Log().find("too many frames side=backend") != std::string::npos; }, 5s))
      << broker_->Log();
  // The good worker keeps getting work.
  auto client = NewClient();
  auto jobs = client->Submit(Refresh("pkg", 1, {"a"}));
  ASSERT_TRUE(good->PumpUntil([&] { return !good->dispatches.empty(); }, 5s));
  EXPECT_EQ(good->dispatches[0].job_id, jobs[0].id);
}

TEST_P(BrokerProcessTest, StatsWorkersAndDeadRetry) {
  auto w = NewWorker("w1");
  ASSERT_TRUE(w->Register({"a"}, 3));
  auto client = NewClient();
  auto jobs = client->Submit(Refresh("pkg", 1, {"a"}));
  client->Submit(Refresh("other", 1, {"b"}));
  ASSERT_TRUE(w->PumpUntil([&] { return !w->dispatches.empty(); }, 5s));
  msg::JobResult r;
  r.job_id = w->dispatches[0].job_id;
  r.attempt = w->dispatches[0].attempt;
  r.outcome = Outcome::kPermanentError;
  r.error = "source is gone";
  w->Send(r);
  ASSERT_TRUE(w->PumpUntil([&] { return !w->acks.empty(); }, 5s));
  auto dead = client->Call(msg::DeadRequest{});
  ASSERT_TRUE(dead);
  ASSERT_EQ(std::get<msg::JobsReply>(*dead).jobs.size(), 1u);
  EXPECT_EQ(std::get<msg::JobsReply>(*dead).jobs[0].last_error.value_or(""), "source is gone");
  auto stats = client->Call(msg::StatsRequest{});
  ASSERT_TRUE(stats);
  auto& st = std::get<msg::StatsReply>(*stats);
  EXPECT_EQ(st.workers, 1u);
  EXPECT_EQ(st.queue_depth, 1u);  // "other" on b: no worker
  EXPECT_TRUE(st.oldest_queued_at_ms);
  std::map<std::string, bool> online;
  for (const auto& d : st.dps) online[d.dp] = d.online;
  EXPECT_TRUE(online["a"]);
  EXPECT_FALSE(online["b"]);
  auto workers = client->Call(msg::WorkersRequest{});
  ASSERT_TRUE(workers);
  ASSERT_EQ(std::get<msg::WorkersReply>(*workers).workers.size(), 1u);
  EXPECT_EQ(std::get<msg::WorkersReply>(*workers).workers[0].name, "w1");
  auto retried = client->Call(msg::RetryRequest{jobs[0].id});
  ASSERT_TRUE(retried);
  ASSERT_TRUE(std::holds_alternative<msg::JobsReply>(*retried));
  EXPECT_EQ(std::get<msg::JobsReply>(*retried).jobs[0].attempts, 0u);
  ASSERT_TRUE(w->PumpUntil([&] { return w->dispatches.size() == 2; }, 5s));
}

TEST_P(BrokerProcessTest, ProgressIsForwardedAndCancelAndVerifyWork) {
  zmq::socket_t sub(ctx_, zmq::socket_type::sub);
  sub.set(zmq::sockopt::linger, 0);
  sub.set(zmq::sockopt::subscribe, std::string(msg::kTopicRoot));
  sub.connect(broker_->events);
  auto w = NewWorker("w1");
  ASSERT_TRUE(w->Register({"a"}, 2));
  auto client = NewClient();
  auto jobs = client->Submit(Refresh("pkg", 3, {"a"}));
  ASSERT_TRUE(w->PumpUntil([&] { return !w->dispatches.empty(); }, 5s));
  const auto d = w->dispatches.front();
  // Progress reports come out as progress events (seq 0), never stored. The subscription may
  // still be joining, so keep reporting until one arrives.
  bool got_progress = false;
  const auto deadline = Clock::now() + 5s;
  while (!got_progress && Clock::now() < deadline) {
    w->Send(msg::ProgressReport{d.job_id, d.attempt, msg::Progress{1, 4, 10, 40}});
    w->PumpOnce(10ms);
    zmq::message_t topic, body;
    while (sub.recv(topic, zmq::recv_flags::dontwait)) {
      ASSERT_TRUE(sub.recv(body));
      auto env = msg::Decode(body.to_string_view());
      ASSERT_TRUE(env.ok());
      const auto& e = std::get<msg::Event>(env.value().body);
      if (e.kind == msg::EventKind::kProgress) {
        EXPECT_EQ(e.seq, 0u);
        ASSERT_TRUE(e.progress);
        EXPECT_EQ(e.progress->files_total, 4u);
        EXPECT_EQ(e.job.id, d.job_id);
        got_progress = true;
      }
    }
  }
  EXPECT_TRUE(got_progress);
  auto stored = client->Call(msg::EventsSinceRequest{});
  ASSERT_TRUE(stored);
  for (const auto& e : std::get<msg::EventsReply>(*stored).events) EXPECT_EQ(e.kind, msg::EventKind::kState);
  // Operator cancel of the running job: cancel-job to the worker, cancelled once it answers.
  auto c = client->Call(msg::CancelRequest{d.job_id});
  ASSERT_TRUE(c);
  ASSERT_TRUE(std::holds_alternative<msg::JobsReply>(*c));
  ASSERT_TRUE(w->PumpUntil([&] { return !w->cancels.empty(); }, 5s));
  EXPECT_EQ(w->cancels[0].attempt, d.attempt);
  w->Result(d, Outcome::kCancelled);
  ASSERT_TRUE(WaitFor([&] {
    auto j = client->Status(d.job_id);
    return j && j->state == JobState::kCancelled;
  }, 5s));
  // Verify: a verify job for the DP, dispatched with its flags.
  msg::VerifyRequest v;
  v.dp = "a";
  v.repair = true;
  auto vr = client->Call(v);
  ASSERT_TRUE(vr);
  ASSERT_TRUE(std::holds_alternative<msg::JobsReply>(*vr));
  ASSERT_TRUE(w->PumpUntil([&] { return w->dispatches.size() == 2; }, 5s));
  EXPECT_EQ(w->dispatches[1].kind, msg::JobKind::kVerify);
  EXPECT_TRUE(w->dispatches[1].repair);
  msg::VerifyRequest unknown;
  unknown.dp = "zz";
  auto ur = client->Call(unknown);
  ASSERT_TRUE(ur);
  EXPECT_EQ(std::get<msg::ErrorReply>(*ur).kind, msg::ErrorKind::kUnknownDp);
}

INSTANTIATE_TEST_SUITE_P(CommitModes, BrokerProcessTest, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Pipelined") : std::string("Inline");
                         });

// sched_getattr's view of thread `tid`: the slice it asked for (SCHED_OTHER, Linux >= 6.12).
std::uint64_t SliceNs(pid_t tid) {
  struct {
    std::uint32_t size, policy;
    std::uint64_t flags;
    std::int32_t nice;
    std::uint32_t priority;
    std::uint64_t runtime, deadline, period;
    std::uint32_t util_min, util_max;
  } attr{};
  if (::syscall(SYS_sched_getattr, tid, &attr, sizeof attr, 0) != 0) return 0;
  return attr.runtime;
}

// The threads every ack waits on (the event loop on the main thread, the commit thread and
// ZeroMQ's I/O thread) ask for 100 us slices; background threads keep the default.
TEST(BrokerThreads, AckPathThreadsAskForShortSchedulerSlices) {
  if (BinDir().empty()) GTEST_SKIP() << "DESPOOL_BIN_DIR not set";
  utsname u{};
  int major = 0, minor = 0;
  ASSERT_EQ(::uname(&u), 0);
  ASSERT_EQ(std::sscanf(u.release, "%d.%d", &major, &minor), 2);
  if (major < 6 || (major == 6 && minor < 12)) GTEST_SKIP() << "kernel before 6.12 keeps no per-thread slice";
  TempDir dir;
  BrokerProcess broker(dir.path(), std::string(kConfig));
  ASSERT_TRUE(broker.Start()) << broker.Log();
  zmq::context_t ctx{1};
  Client client(ctx, broker.frontend);
  ASSERT_EQ(client.Submit(Refresh("pkg", 1, {"a"})).size(), 1u);  // the commit thread has run
  std::map<std::string, std::uint64_t> slice_by_name;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(broker.pid()) + "/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    const pid_t tid = std::stoi(task.path().filename().string());
    slice_by_name[tid == broker.pid() ? "main" : name] = SliceNs(tid);
  }
  EXPECT_EQ(slice_by_name["main"], 100'000u);
  EXPECT_EQ(slice_by_name["broker-commit"], 100'000u);
  EXPECT_EQ(slice_by_name["ZMQbg/IO/0"], 100'000u);
  ASSERT_TRUE(slice_by_name.count("ZMQbg/Reaper"));
  EXPECT_NE(slice_by_name["ZMQbg/Reaper"], 100'000u);
  EXPECT_EQ(broker.Stop(), 0) << broker.Log();
}

}  // namespace
}  // namespace despool::broker
