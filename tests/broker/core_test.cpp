// The broker state machine, driven in-process with a fake clock.
#include <gtest/gtest.h>

#include <set>

#include "core_harness.h"
#include "despool/broker/backoff.h"

namespace despool::broker {
namespace {

using msg::JobState;
using msg::Outcome;
using testing::CoreHarness;

TEST(Backoff, CeilingFollowsTheContractFormula) {
  // uniform(base, min(max, base * 2^(n-1)))
  EXPECT_EQ(BackoffCeiling(30'000, 3'600'000, 1), 30'000u);
  EXPECT_EQ(BackoffCeiling(30'000, 3'600'000, 2), 60'000u);
  EXPECT_EQ(BackoffCeiling(30'000, 3'600'000, 3), 120'000u);
  EXPECT_EQ(BackoffCeiling(30'000, 3'600'000, 7), 1'920'000u);
  EXPECT_EQ(BackoffCeiling(30'000, 3'600'000, 8), 3'600'000u);   // 3 840 000 capped
  EXPECT_EQ(BackoffCeiling(30'000, 3'600'000, 1000), 3'600'000u);  // no overflow
  EXPECT_EQ(BackoffCeiling(1, UINT64_MAX, 200), UINT64_MAX);      // saturates
  EXPECT_EQ(BackoffCeiling(500, 500, 5), 500u);
}

TEST(Backoff, DelaysStayWithinBoundsAndSpanThem) {
  std::mt19937_64 rng(7);
  for (std::uint32_t n = 1; n <= 12; ++n) {
    const std::uint64_t hi = BackoffCeiling(1000, 60'000, n);
    std::uint64_t lo_seen = UINT64_MAX, hi_seen = 0;
    for (int i = 0; i < 2000; ++i) {
      const std::uint64_t d = BackoffDelay(1000, 60'000, n, rng);
      ASSERT_GE(d, 1000u) << "n=" << n;
      ASSERT_LE(d, hi) << "n=" << n;
      lo_seen = std::min(lo_seen, d);
      hi_seen = std::max(hi_seen, d);
    }
    if (n > 1) {
      // A uniform draw over the whole range gets near both ends.
      EXPECT_LT(lo_seen, 1000 + (hi - 1000) / 10) << "n=" << n;
      EXPECT_GT(hi_seen, hi - (hi - 1000) / 10) << "n=" << n;
    } else {
      EXPECT_EQ(lo_seen, 1000u);
      EXPECT_EQ(hi_seen, 1000u);
    }
  }
}

TEST(Backoff, PolicyDefaultsAndValidation) {
  ResolvedPolicy d;
  ResolvedPolicy out;
  std::string err;
  ASSERT_TRUE(ResolvePolicy({}, d, &out, &err));
  EXPECT_EQ(out.retry_base_ms, 30'000u);
  EXPECT_EQ(out.retry_max_ms, 3'600'000u);
  EXPECT_EQ(out.max_attempts, 10u);
  EXPECT_EQ(out.on_exhausted, msg::OnExhausted::kDead);
  msg::RetryPolicy bad;
  bad.retry_base_ms = 5000;
  bad.retry_max_ms = 1000;
  EXPECT_FALSE(ResolvePolicy(bad, d, &out, &err));
  EXPECT_NE(err.find("below"), std::string::npos);
}

TEST(Core, UnknownDpIsRefusedNamingItAndNothingIsStored) {
  CoreHarness h;
  msg::SubmitRequest req;
  req.instructions.push_back(h.Refresh("pkg", 1, {"dp1", "nosuch", "other"}));
  msg::Body reply = h.core().Submit(req, h.now);
  h.Commit();
  auto* err = std::get_if<msg::ErrorReply>(&reply);
  ASSERT_NE(err, nullptr);
  EXPECT_EQ(err->kind, msg::ErrorKind::kUnknownDp);
  EXPECT_NE(err->message.find("nosuch"), std::string::npos);
  EXPECT_NE(err->message.find("other"), std::string::npos);
  auto counts = h.store().Counts();
  ASSERT_TRUE(counts.ok());
  EXPECT_TRUE(counts->by_state.empty());
  EXPECT_TRUE(h.events.empty());
}

TEST(Core, GroupsExpandAndIdsAreUnique) {
  CoreHarness h;
  msg::Instruction in = h.Refresh("pkg", 1, {"dp1"});
  in.dp_groups = {"both"};
  auto ids = h.Submit(in);
  ASSERT_EQ(ids.size(), 2u);  // dp1 once, then dp2 from the group
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_EQ(h.Job(ids[0]).dp, "dp1");
  EXPECT_EQ(h.Job(ids[1]).dp, "dp2");
  EXPECT_EQ(h.Job(ids[0]).state, JobState::kQueued);
}

TEST(Core, JobsForADpWithoutWorkersStayQueuedAndBurnNoAttempts) {
  CoreHarness h;
  auto ids = h.Submit(h.Refresh("pkg", 1, {"dp1"}));
  for (int i = 0; i < 5; ++i) {
    h.Advance(3'600'000);
    h.Round();
  }
  EXPECT_EQ(h.Job(ids[0]).state, JobState::kQueued);
  EXPECT_EQ(h.Job(ids[0]).attempts, 0u);
  h.Register("w1", {"dp1"}, 1);
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].job_id, ids[0]);
  EXPECT_EQ(d[0].attempt, 1u);
  EXPECT_EQ(h.Job(ids[0]).state, JobState::kRunning);
}

TEST(Core, DispatchRespectsCreditAndPicksTheLeastLoadedWorker) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 1);
  h.Register("w2", {"dp1"}, 3);
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(h.Submit(h.Refresh("p" + std::to_string(i), 1, {"dp1"}))[0]);
  h.Round();
  auto d1 = h.TakeDispatches("w1");
  auto d2 = h.TakeDispatches("w2");
  EXPECT_EQ(d1.size(), 1u);
  EXPECT_EQ(d2.size(), 3u);
  // The first two go one to each (least loaded), so the oldest jobs are spread.
  std::set<std::string> first{d1[0].job_id, d2[0].job_id};
  EXPECT_TRUE(first.count(ids[0]) && first.count(ids[1]));
  // Finishing one on w1 frees exactly one credit there.
  h.Result("w1", d1[0].job_id, d1[0].attempt, Outcome::kApplied);
  h.Round();
  EXPECT_EQ(h.TakeDispatches("w1").size(), 1u);
  EXPECT_EQ(h.Job(d1[0].job_id).state, JobState::kApplied);
}

TEST(Core, AWorkerServingSeveralDpsServesThemInTurn) {
  // dp1 sorts first and always has ready work; dp2's jobs must still go out (they starved once).
  CoreHarness h;
  h.Register("w1", {"dp1", "dp2"}, 2);
  std::vector<std::string> dp1_ids, dp2_ids;
  for (int i = 0; i < 10; ++i) dp1_ids.push_back(h.Submit(h.Refresh("a" + std::to_string(i), 1, {"dp1"}))[0]);
  for (int i = 0; i < 3; ++i) dp2_ids.push_back(h.Submit(h.Refresh("b" + std::to_string(i), 1, {"dp2"}))[0]);
  std::set<std::string> dp2_dispatched;
  for (int round = 0; round < 3; ++round) {
    h.Round();
    auto d = h.TakeDispatches("w1");
    ASSERT_EQ(d.size(), 2u) << "round " << round;
    int from_dp2 = 0;
    for (const auto& x : d) {
      if (x.dp == "dp2") {
        ++from_dp2;
        dp2_dispatched.insert(x.job_id);
      }
      h.Result("w1", x.job_id, x.attempt, Outcome::kApplied);
    }
    EXPECT_EQ(from_dp2, 1) << "round " << round << ": one slot per DP while both have work";
  }
  EXPECT_EQ(dp2_dispatched, std::set<std::string>(dp2_ids.begin(), dp2_ids.end()));
}

TEST(Core, ADrainingWorkerGetsNoMoreDispatches) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 4);
  auto first = h.Submit(h.Refresh("a", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 1u);
  msg::Heartbeat hb;
  hb.running = 1;
  hb.draining = true;
  h.core().OnWorkerMessage("w1", hb, h.now);
  h.Commit();
  auto later = h.Submit(h.Refresh("b", 1, {"dp1"}))[0];
  h.Round();
  EXPECT_TRUE(h.TakeDispatches("w1").empty()) << "free credit, but the worker is draining";
  ASSERT_EQ(h.core().Workers().size(), 1u);
  EXPECT_TRUE(h.core().Workers()[0].draining);
  // Its running job still completes normally.
  h.Result("w1", first, d[0].attempt, Outcome::kApplied);
  EXPECT_EQ(h.Job(first).state, JobState::kApplied);
  // Another worker picks up what the draining one would have taken.
  h.Register("w2", {"dp1"}, 1);
  h.Round();
  auto d2 = h.TakeDispatches("w2");
  ASSERT_EQ(d2.size(), 1u);
  EXPECT_EQ(d2[0].job_id, later);
}

TEST(Core, OneJobPerDpAndPackageInFlight) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 4);
  h.Register("w2", {"dp1"}, 4);
  auto a = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  auto d2 = h.TakeDispatches("w2");
  d.insert(d.end(), d2.begin(), d2.end());
  ASSERT_EQ(d.size(), 1u);
  const std::string peer = h.Job(a).worker.value() == "w1-name" ? "w1" : "w2";
  // A newer version arrives while v1 runs: v1 is told to cancel, v2 waits for the lane.
  auto b = h.Submit(h.Refresh("pkg", 2, {"dp1"}))[0];
  h.Round();
  EXPECT_TRUE(h.TakeDispatches("w1").empty());
  EXPECT_TRUE(h.TakeDispatches("w2").empty());
  auto cancels = h.Sent<msg::CancelJob>(peer);
  ASSERT_EQ(cancels.size(), 1u);
  EXPECT_EQ(cancels[0].job_id, a);
  EXPECT_EQ(cancels[0].attempt, d[0].attempt);
  EXPECT_EQ(h.Job(b).state, JobState::kQueued);
  // Another package on the same DP is not blocked.
  auto c = h.Submit(h.Refresh("other", 1, {"dp1"}))[0];
  h.Round();
  EXPECT_EQ(h.Job(c).state, JobState::kRunning);
  // v1 stops before its switch: superseded; then v2 runs.
  h.Result(peer, a, d[0].attempt, Outcome::kCancelled);
  h.Round();
  EXPECT_EQ(h.Job(a).state, JobState::kSuperseded);
  EXPECT_EQ(h.Job(b).state, JobState::kRunning);
}

TEST(Core, RunningStaleJobThatSwitchedEndsApplied) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 2);
  auto a = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 1u);
  auto b = h.Submit(h.Refresh("pkg", 2, {"dp1"}))[0];
  h.Round();
  h.Result("w1", a, d[0].attempt, Outcome::kApplied);
  h.Round();
  EXPECT_EQ(h.Job(a).state, JobState::kApplied);
  EXPECT_EQ(h.Job(b).state, JobState::kRunning);
}

TEST(Core, NewerVersionSupersedesQueuedAndDeferredOlderOnes) {
  CoreHarness h;
  auto v1 = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  auto v2 = h.Submit(h.Refresh("pkg", 2, {"dp1"}))[0];
  EXPECT_EQ(h.Job(v1).state, JobState::kSuperseded);
  EXPECT_EQ(h.Job(v2).state, JobState::kQueued);
  // An older version arriving late is obsolete at once.
  auto old = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  EXPECT_EQ(h.Job(old).state, JobState::kSuperseded);
  // Deferred v2 is superseded by v3.
  h.Register("w1", {"dp1"}, 1);
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 1u);
  h.Result("w1", v2, d[0].attempt, Outcome::kDeferred, {"bin/tool"});
  EXPECT_EQ(h.Job(v2).state, JobState::kDeferred);
  auto v3 = h.Submit(h.Refresh("pkg", 3, {"dp1"}))[0];
  h.Round();
  EXPECT_EQ(h.Job(v2).state, JobState::kSuperseded);
  EXPECT_EQ(h.Job(v3).state, JobState::kRunning);
}

TEST(Core, DeferralsFollowTheScheduleThenDie) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 1);
  msg::RetryPolicy p;
  p.retry_base_ms = 1000;
  p.retry_max_ms = 4000;
  p.max_attempts = 3;
  auto id = h.Submit(h.Refresh("pkg", 1, {"dp1"}, p))[0];
  for (std::uint32_t n = 1; n <= 3; ++n) {
    h.Round();
    h.Heartbeat("w1");
    auto d = h.TakeDispatches("w1");
    ASSERT_EQ(d.size(), 1u) << "n=" << n;
    EXPECT_FALSE(d[0].force);
    h.Result("w1", id, d[0].attempt, Outcome::kDeferred, {"lib/a.so"});
    auto job = h.Job(id);
    EXPECT_EQ(job.attempts, n);
    if (n == 3) {
      EXPECT_EQ(job.state, JobState::kDead);
      break;
    }
    ASSERT_EQ(job.state, JobState::kDeferred);
    ASSERT_TRUE(job.next_attempt_at_ms);
    const std::int64_t delay = *job.next_attempt_at_ms - h.now;
    EXPECT_GE(delay, 1000);
    EXPECT_LE(delay, static_cast<std::int64_t>(BackoffCeiling(1000, 4000, n)));
    EXPECT_EQ(job.in_use, std::vector<std::string>{"lib/a.so"});
    // Not due yet: nothing moves.
    h.Advance(delay - 1);
    h.Heartbeat("w1");
    h.Round();
    EXPECT_EQ(h.Job(id).state, JobState::kDeferred);
    EXPECT_TRUE(h.TakeDispatches("w1").empty());
    h.Advance(1);
  }
  auto dead = h.Job(id);
  EXPECT_EQ(dead.state, JobState::kDead);
  ASSERT_TRUE(dead.last_error);
}

TEST(Core, ExhaustedWithForceGetsOneForcedAttempt) {
  for (Outcome forced_outcome : {Outcome::kApplied, Outcome::kRetryableError}) {
    CoreHarness h;
    h.Register("w1", {"dp1"}, 1);
    msg::RetryPolicy p;
    p.retry_base_ms = 10;
    p.retry_max_ms = 10;
    p.max_attempts = 2;
    p.on_exhausted = msg::OnExhausted::kForce;
    auto id = h.Submit(h.Refresh("pkg", 1, {"dp1"}, p))[0];
    for (int n = 1; n <= 2; ++n) {
      h.Round();
      auto d = h.TakeDispatches("w1");
      ASSERT_EQ(d.size(), 1u);
      EXPECT_FALSE(d[0].force);
      h.Result("w1", id, d[0].attempt, Outcome::kDeferred, {"x"});
      h.Advance(10);
      h.Heartbeat("w1");
    }
    EXPECT_EQ(h.Job(id).attempts, 2u);
    h.Round();
    auto d = h.TakeDispatches("w1");
    ASSERT_EQ(d.size(), 1u);
    EXPECT_TRUE(d[0].force) << "the run after exhaustion is forced";
    h.Result("w1", id, d[0].attempt, forced_outcome, {}, std::string("disk full"));
    if (forced_outcome == Outcome::kApplied) {
      EXPECT_EQ(h.Job(id).state, JobState::kApplied);
    } else {
      EXPECT_EQ(h.Job(id).state, JobState::kDead) << "a failed forced attempt ends dead";
      EXPECT_NE(h.Job(id).last_error->find("forced"), std::string::npos);
    }
  }
}

TEST(Core, RetryableErrorsUseTheScheduleAndPermanentErrorsDieAtOnce) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 2);
  auto a = h.Submit(h.Refresh("a", 1, {"dp1"}))[0];
  auto b = h.Submit(h.Refresh("b", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 2u);
  h.Result("w1", a, 1, Outcome::kRetryableError, {}, std::string("No space left on device"));
  h.Result("w1", b, 1, Outcome::kPermanentError, {}, std::string("source missing"));
  auto ja = h.Job(a);
  EXPECT_EQ(ja.state, JobState::kDeferred);
  EXPECT_EQ(ja.attempts, 1u);
  EXPECT_EQ(*ja.next_attempt_at_ms - h.now, 30'000);  // n=1: uniform(30 s, 30 s)
  EXPECT_EQ(*ja.last_error, "No space left on device");
  auto jb = h.Job(b);
  EXPECT_EQ(jb.state, JobState::kDead);
  EXPECT_EQ(jb.attempts, 1u);
  EXPECT_EQ(*jb.last_error, "source missing");
}

TEST(Core, LostWorkerRequeuesWithoutAnAttemptAndItsLateResultIsStale) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 1);
  auto id = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 1u);
  // Silence for liveness x interval: lost.
  h.Advance(3001);
  h.Round();
  auto job = h.Job(id);
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_EQ(job.attempts, 0u);
  EXPECT_TRUE(h.core().Workers().empty());
  // Another worker takes it with a new token.
  h.Register("w2", {"dp1"}, 1);
  h.Round();
  auto d2 = h.TakeDispatches("w2");
  ASSERT_EQ(d2.size(), 1u);
  EXPECT_EQ(d2[0].attempt, d[0].attempt + 1);
  // The lost worker's late result is acknowledged and recorded but moves nothing.
  h.sent.clear();
  h.Result("w1", id, d[0].attempt, Outcome::kApplied);
  EXPECT_EQ(h.Job(id).state, JobState::kRunning);
  auto acks = h.Sent<msg::ResultAck>("w1");
  ASSERT_EQ(acks.size(), 1u);
  EXPECT_EQ(acks[0].attempt, d[0].attempt);
  auto hist = h.store().History(id);
  ASSERT_TRUE(hist.ok());
  ASSERT_EQ(hist->size(), 2u);
  EXPECT_EQ((*hist)[0].outcome, "lost");
  EXPECT_EQ((*hist)[1].outcome, "stale:applied");
  h.Result("w2", id, d2[0].attempt, Outcome::kUpToDate);
  EXPECT_EQ(h.Job(id).state, JobState::kUpToDate);
}

TEST(Core, HeartbeatsKeepAWorkerAlive) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 1);
  for (int i = 0; i < 10; ++i) {
    h.Advance(900);
    h.Heartbeat("w1");
    h.Round();
  }
  EXPECT_EQ(h.core().Workers().size(), 1u);
  EXPECT_FALSE(h.Sent<msg::Heartbeat>("w1").empty()) << "the broker heartbeats too";
  // Unknown peers are told to register again.
  h.Heartbeat("ghost");
  EXPECT_EQ(h.Sent<msg::Disconnect>("ghost").size(), 1u);
}

TEST(Core, ReleaseHintMakesADeferredJobDueAtOnce) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 1);
  auto id = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  h.Result("w1", id, d[0].attempt, Outcome::kDeferred, {"a"});
  ASSERT_EQ(h.Job(id).state, JobState::kDeferred);
  // A hint for another attempt is ignored.
  h.core().OnWorkerMessage("w1", msg::ReleaseHint{id, d[0].attempt + 7}, h.now);
  h.Round();
  EXPECT_EQ(h.Job(id).state, JobState::kDeferred);
  // The right one requeues and dispatches in the same round, long before the 30 s timer.
  h.Advance(5);
  h.core().OnWorkerMessage("w1", msg::ReleaseHint{id, d[0].attempt}, h.now);
  h.Round();
  EXPECT_EQ(h.Job(id).state, JobState::kRunning);
  auto d2 = h.TakeDispatches("w1");
  ASSERT_EQ(d2.size(), 1u);
  EXPECT_EQ(h.Record(id).released_step, 1u);
  // Deferred again (step 2): a repeated hint of the old attempt does nothing.
  h.Result("w1", id, d2[0].attempt, Outcome::kDeferred, {"a"});
  h.core().OnWorkerMessage("w1", msg::ReleaseHint{id, d[0].attempt}, h.now);
  h.Round();
  EXPECT_EQ(h.Job(id).state, JobState::kDeferred);
  EXPECT_EQ(h.Job(id).attempts, 2u);
}

TEST(Core, RetryResetsADeadJobAndCancelStopsJobs) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 2);
  auto a = h.Submit(h.Refresh("a", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  h.Result("w1", a, d[0].attempt, Outcome::kPermanentError, {}, std::string("boom"));
  ASSERT_EQ(h.Job(a).state, JobState::kDead);
  // retry: dead -> queued, attempts 0.
  msg::Body r = h.core().Retry({a}, h.now);
  h.Round();
  ASSERT_TRUE(std::holds_alternative<msg::JobsReply>(r));
  EXPECT_EQ(h.Job(a).attempts, 0u);
  EXPECT_EQ(h.Job(a).state, JobState::kRunning);
  // retry of a non-dead job: conflict; unknown id: not found.
  msg::Body conflict = h.core().Retry({a}, h.now);
  EXPECT_EQ(std::get<msg::ErrorReply>(conflict).kind, msg::ErrorKind::kConflict);
  msg::Body nf = h.core().Retry({"nope-1"}, h.now);
  EXPECT_EQ(std::get<msg::ErrorReply>(nf).kind, msg::ErrorKind::kNotFound);
  // cancel a running job: cancel-job goes out, the worker's answer ends it cancelled.
  h.sent.clear();
  msg::Body c = h.core().Cancel({a}, h.now);
  h.Commit();
  ASSERT_TRUE(std::holds_alternative<msg::JobsReply>(c));
  auto cj = h.Sent<msg::CancelJob>("w1");
  ASSERT_EQ(cj.size(), 1u);
  h.Result("w1", a, cj[0].attempt, Outcome::kCancelled);
  EXPECT_EQ(h.Job(a).state, JobState::kCancelled);
  // cancel a queued job (DP without a worker): at once.
  auto b = h.Submit(h.Refresh("b", 1, {"dp2"}))[0];
  msg::Body c2 = h.core().Cancel({b}, h.now);
  h.Commit();
  EXPECT_EQ(std::get<msg::JobsReply>(c2).jobs.at(0).state, JobState::kCancelled);
  EXPECT_EQ(h.Job(b).state, JobState::kCancelled);
  msg::Body again = h.core().Cancel({b}, h.now);
  EXPECT_EQ(std::get<msg::ErrorReply>(again).kind, msg::ErrorKind::kConflict);
}

TEST(Core, VerifyCreatesAVerifyJob) {
  CoreHarness h;
  msg::VerifyRequest v;
  v.dp = "dp2";
  v.repair = true;
  msg::Body r = h.core().Verify(v, h.now);
  h.Commit();
  auto& jobs = std::get<msg::JobsReply>(r).jobs;
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].kind, msg::JobKind::kVerify);
  h.Register("w1", {"dp2"}, 1);
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].kind, msg::JobKind::kVerify);
  EXPECT_TRUE(d[0].repair);
  msg::JobResult res;
  res.job_id = jobs[0].id;
  res.attempt = d[0].attempt;
  res.outcome = Outcome::kVerified;
  res.report = msg::VerifyReport{{"a"}, {"b"}, {"c"}};
  h.core().OnWorkerMessage("w1", res, h.now);
  h.Commit();
  auto job = h.Job(jobs[0].id);
  EXPECT_EQ(job.state, JobState::kApplied);
  ASSERT_TRUE(job.report);
  EXPECT_EQ(job.report->changed, std::vector<std::string>{"c"});
  msg::VerifyRequest unknown;
  unknown.dp = "zzz";
  EXPECT_EQ(std::get<msg::ErrorReply>(h.core().Verify(unknown, h.now)).kind, msg::ErrorKind::kUnknownDp);
}

TEST(Core, EveryStateChangeIsAnEventWithIncreasingSeq) {
  CoreHarness h;
  h.Register("w1", {"dp1"}, 1);
  auto id = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  h.Result("w1", id, d[0].attempt, Outcome::kApplied);
  std::vector<JobState> states;
  std::uint64_t last = 0;
  for (const auto& e : h.events) {
    if (e.kind != msg::EventKind::kState) continue;
    EXPECT_GT(e.seq, last);
    last = e.seq;
    if (e.job.id == id) states.push_back(e.job.state);
  }
  EXPECT_EQ(states, (std::vector<JobState>{JobState::kQueued, JobState::kRunning, JobState::kApplied}));
  auto page = h.store().EventsSince(0, 100, std::nullopt, std::nullopt);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->events.size(), 3u);
  EXPECT_EQ(page->last_seq, last);
}

TEST(Core, RestartRebuildsQueuesTimersAndOrphans) {
  const std::string path = ::testing::TempDir() + "/core_restart_" + std::to_string(::getpid()) + ".db";
  std::remove(path.c_str());
  CoreHarness h(CoreHarness::DefaultOptions(), path);
  h.Register("w1", {"dp1"}, 2);
  auto running = h.Submit(h.Refresh("run", 1, {"dp1"}))[0];
  auto deferred = h.Submit(h.Refresh("def", 1, {"dp1"}))[0];
  h.Round();
  auto d = h.TakeDispatches("w1");
  ASSERT_EQ(d.size(), 2u);
  h.Result("w1", deferred, 1, Outcome::kDeferred, {"f"});
  auto queued = h.Submit(h.Refresh("q", 1, {"dp2"}))[0];
  const auto due = *h.Job(deferred).next_attempt_at_ms;

  h.Restart();
  EXPECT_EQ(h.core().ActiveJobs(), 3u);
  EXPECT_EQ(h.Job(running).state, JobState::kRunning);
  // The worker comes back and re-sends the result of the run it finished meanwhile.
  h.Register("w1b", {"dp1", "dp2"}, 4);
  h.Result("w1b", running, 1, Outcome::kApplied);
  EXPECT_EQ(h.Job(running).state, JobState::kApplied);
  h.Round();
  auto d2 = h.TakeDispatches("w1b");
  ASSERT_EQ(d2.size(), 1u);
  EXPECT_EQ(d2[0].job_id, queued);
  // The deferred job comes due at its stored time.
  h.AdvanceTo(due - 1, "w1b");
  EXPECT_EQ(h.Job(deferred).state, JobState::kDeferred);
  h.AdvanceTo(due, "w1b");
  EXPECT_EQ(h.Job(deferred).state, JobState::kRunning);
  // New ids never repeat old ones.
  auto fresh = h.Submit(h.Refresh("new", 1, {"dp2"}))[0];
  EXPECT_NE(fresh, running);
  EXPECT_NE(fresh, deferred);
  EXPECT_NE(fresh, queued);
  std::remove(path.c_str());
}

// The Core's per-state and per-DP counts (what stats answers from) against a scan of the store.
void ExpectCountsMatchStore(CoreHarness& h, const std::string& when) {
  auto c = h.store().Counts();
  ASSERT_TRUE(c.ok());
  for (std::size_t i = 0; i < kJobStateCount; ++i) {
    const auto state = static_cast<JobState>(i);
    auto it = c->by_state.find(state);
    EXPECT_EQ(h.core().JobCounts()[i], it == c->by_state.end() ? 0u : it->second)
        << when << ": state " << msg::ToString(state);
  }
  for (const std::string dp : {"dp1", "dp2"}) {
    auto it = c->active_by_dp.find(dp);
    const std::array<std::uint64_t, 3> want = it == c->active_by_dp.end() ? std::array<std::uint64_t, 3>{} : it->second;
    EXPECT_EQ(h.core().ActiveCounts(dp), want) << when << ": dp " << dp;
  }
}

TEST(Core, CountsFollowEveryStateChangeAndSurviveARestart) {
  const std::string path = ::testing::TempDir() + "/core_counts_" + std::to_string(::getpid()) + ".db";
  std::remove(path.c_str());
  CoreHarness h(CoreHarness::DefaultOptions(), path);
  ExpectCountsMatchStore(h, "empty");
  h.Register("w1", {"dp1"}, 4);
  msg::RetryPolicy once;
  once.max_attempts = 1;
  auto applied = h.Submit(h.Refresh("a", 1, {"dp1"}))[0];
  auto deferred = h.Submit(h.Refresh("d", 1, {"dp1"}))[0];
  auto dead = h.Submit(h.Refresh("x", 1, {"dp1"}, once))[0];
  auto running = h.Submit(h.Refresh("r", 1, {"dp1"}))[0];
  h.Submit(h.Refresh("q", 2, {"dp2"}));                   // stays queued: no worker serves dp2
  auto old = h.Submit(h.Refresh("q", 1, {"dp2"}))[0];      // superseded at once
  ExpectCountsMatchStore(h, "submitted");
  h.Round();
  ASSERT_EQ(h.TakeDispatches("w1").size(), 4u);
  ExpectCountsMatchStore(h, "dispatched");
  h.Result("w1", applied, 1, Outcome::kApplied);
  h.Result("w1", deferred, 1, Outcome::kDeferred, {"f"});
  h.Result("w1", dead, 1, Outcome::kDeferred, {"f"});
  ExpectCountsMatchStore(h, "results");
  EXPECT_EQ(h.Job(old).state, JobState::kSuperseded);
  EXPECT_EQ(h.Job(dead).state, JobState::kDead);
  ASSERT_TRUE(std::holds_alternative<msg::JobsReply>(h.core().Cancel(msg::CancelRequest{running}, h.now)));
  h.Commit();
  ExpectCountsMatchStore(h, "cancel sent");
  h.Result("w1", running, 1, Outcome::kCancelled);
  ExpectCountsMatchStore(h, "cancelled");

  h.Restart();
  ExpectCountsMatchStore(h, "restarted");
  // A parked job loaded light at start is superseded (reloaded in full from the store), a dead
  // one retried.
  auto newer = h.Submit(h.Refresh("d", 2, {"dp1"}))[0];
  EXPECT_EQ(h.Job(deferred).state, JobState::kSuperseded);
  EXPECT_EQ(h.Job(deferred).in_use, std::vector<std::string>{"f"});  // the full row was kept
  auto retried = h.core().Retry(msg::RetryRequest{dead}, h.now);
  ASSERT_TRUE(std::holds_alternative<msg::JobsReply>(retried));
  h.Commit();
  EXPECT_EQ(h.Job(dead).state, JobState::kQueued);
  ExpectCountsMatchStore(h, "after restart");
  h.Register("w2", {"dp1"}, 4);
  h.Round();
  ExpectCountsMatchStore(h, "dispatched again");
  EXPECT_EQ(h.Job(newer).state, JobState::kRunning);
  std::remove(path.c_str());
}

TEST(Core, ADueJobParkedAtStartComesBackInFull) {
  const std::string path = ::testing::TempDir() + "/core_parked_" + std::to_string(::getpid()) + ".db";
  std::remove(path.c_str());
  CoreHarness h(CoreHarness::DefaultOptions(), path);
  h.Register("w1", {"dp1"}, 1);
  auto id = h.Submit(h.Refresh("pkg", 7, {"dp1"}))[0];
  h.Round();
  ASSERT_EQ(h.TakeDispatches("w1").size(), 1u);
  h.Result("w1", id, 1, Outcome::kDeferred, {"bin/a", "bin/b"});
  const auto due = *h.Job(id).next_attempt_at_ms;
  h.Restart();
  h.now = due;
  h.Register("w2", {"dp1"}, 1);
  h.Round();
  auto d = h.TakeDispatches("w2");
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].job_id, id);
  EXPECT_EQ(d[0].attempt, 2u);
  EXPECT_EQ(d[0].version, 7u);
  EXPECT_EQ(d[0].source, "/src/pkg/7");
  const auto job = h.Job(id);
  EXPECT_EQ(job.state, JobState::kRunning);
  EXPECT_EQ(job.attempts, 1u);
  EXPECT_EQ(job.in_use, (std::vector<std::string>{"bin/a", "bin/b"}));  // not lost by the light load
  EXPECT_EQ(h.core().DueLateness().count, 1u);
  EXPECT_EQ(h.core().DueDispatchLateness().count, 1u);
  std::remove(path.c_str());
}

TEST(Core, ParkedJobsAreAnnouncedForWarmingAheadAndStillComeDueOnTime) {
  CoreOptions o = CoreHarness::DefaultOptions();
  o.warm_ahead_ms = 1000;
  CoreHarness h(o);
  h.Register("w1", {"dp1"}, 4);
  msg::RetryPolicy p;
  p.retry_base_ms = 5000;
  p.retry_max_ms = 5000;
  auto first = h.Submit(h.Refresh("a", 1, {"dp1"}, p))[0];
  auto second = h.Submit(h.Refresh("b", 1, {"dp1"}, p))[0];
  h.Round();
  ASSERT_EQ(h.TakeDispatches("w1").size(), 2u);
  h.Result("w1", first, 1, Outcome::kDeferred, {"f"});
  h.Advance(300);
  h.Result("w1", second, 1, Outcome::kDeferred, {"g"});
  const std::int64_t due1 = *h.Job(first).next_attempt_at_ms;
  const std::int64_t due2 = *h.Job(second).next_attempt_at_ms;
  ASSERT_EQ(due2, due1 + 300);
  (void)h.core().TakeWarm();
  h.AdvanceTo(due1 - 1001, "w1");
  EXPECT_TRUE(h.core().TakeWarm().empty());
  h.AdvanceTo(due1 - 1000, "w1");
  EXPECT_EQ(h.core().TakeWarm(), std::vector<std::string>{first});
  EXPECT_EQ(*h.core().NextDue(), due1);
  h.AdvanceTo(due2 - 1000, "w1");
  EXPECT_EQ(h.core().TakeWarm(), std::vector<std::string>{second});  // each announced once
  // A release hint makes the second one due now, ahead of its announced entry.
  h.core().OnWorkerMessage("w1", msg::ReleaseHint{second, 1}, h.now);
  h.Round();
  EXPECT_EQ(h.Job(second).state, JobState::kRunning);
  EXPECT_EQ(h.Job(first).state, JobState::kDeferred);
  h.AdvanceTo(due1 - 1, "w1");
  EXPECT_EQ(h.Job(first).state, JobState::kDeferred);
  h.AdvanceTo(due1, "w1");
  EXPECT_EQ(h.Job(first).state, JobState::kRunning);
  EXPECT_EQ(h.core().DueLateness().count, 2u);
  EXPECT_EQ(h.core().DueLateness().max_ms, 0);
  // The second one's stale entry (before the hint) moves nothing when its old time comes.
  h.AdvanceTo(due2, "w1");
  EXPECT_EQ(h.core().DueLateness().count, 2u);
  EXPECT_TRUE(h.core().TakeWarm().empty());
}

TEST(StringInterner, SharesIdsCountsReferencesAndReusesFreedIds) {
  StringInterner n;
  const auto a = n.Acquire("dp-a");
  EXPECT_EQ(n.Acquire("dp-a"), a);
  const auto b = n.Acquire("a-package-name-longer-than-the-small-string-buffer");
  EXPECT_NE(a, b);
  EXPECT_EQ(n.Name(b), "a-package-name-longer-than-the-small-string-buffer");
  EXPECT_EQ(n.size(), 2u);
  n.Release(a);
  EXPECT_EQ(n.Find("dp-a"), a);  // one reference left
  n.Release(a);
  EXPECT_FALSE(n.Find("dp-a"));
  EXPECT_EQ(n.size(), 1u);
  const auto c = n.Acquire("pkg-c");
  EXPECT_EQ(c, a);  // the freed id is reused
  EXPECT_EQ(n.Name(c), "pkg-c");
  EXPECT_EQ(n.Find("pkg-c"), c);
  EXPECT_EQ(n.Find("a-package-name-longer-than-the-small-string-buffer"), b);
}

TEST(Core, OrphanedRunIsRequeuedAfterTheGrace) {
  const std::string path = ::testing::TempDir() + "/core_orphan_" + std::to_string(::getpid()) + ".db";
  std::remove(path.c_str());
  CoreHarness h(CoreHarness::DefaultOptions(), path);
  h.Register("w1", {"dp1"}, 1);
  auto id = h.Submit(h.Refresh("pkg", 1, {"dp1"}))[0];
  h.Round();
  ASSERT_EQ(h.TakeDispatches("w1").size(), 1u);
  h.Restart();
  h.Advance(5999);
  h.Round();
  EXPECT_EQ(h.Job(id).state, JobState::kRunning);
  h.Advance(1);
  h.Round();
  EXPECT_EQ(h.Job(id).state, JobState::kQueued);
  EXPECT_EQ(h.Job(id).attempts, 0u);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace despool::broker
