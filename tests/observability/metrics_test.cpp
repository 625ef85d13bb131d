// /metrics against the real broker, parsed by the real Prometheus text parser, with values
// checked against a known sequence of jobs driven by a scripted worker.
#include "observability/obs_harness.h"

namespace despool::obs::testing {
namespace {

constexpr const char* kDps = "[dps]\nnames = [\"lab1\", \"lab2\"]\n";
const std::string kWorker = "host-a/w1";

std::string W(const std::string& name) { return name + "{worker=\"" + kWorker + "\"}"; }

bool WaitForState(TestWorker& w, Client& c, const std::string& id, msg::JobState state) {
  return w.PumpUntil(
      [&] {
        auto j = c.Status(id);
        return j && j->state == state;
      },
      15s);
}

// Scrapes until `ready` holds for the parsed samples (the loop publishes its snapshot a few
// times a second), keeping the worker's heartbeats going.
Samples ScrapeUntil(ObsBroker& b, TestWorker& w, const std::function<bool(const Samples&)>& ready,
                    std::map<std::string, std::string>* types = nullptr, std::string* text = nullptr) {
  Samples s;
  const bool ok = w.PumpUntil(
      [&] {
        auto r = b.Get("/metrics");
        if (r.status != 200) return false;
        s.clear();
        if (!ParseMetrics(r.body, b.dir(), &s, types)) return true;  // failure already recorded
        if (text) *text = r.body;
        return ready(s);
      },
      20s);
  EXPECT_TRUE(ok) << "metrics never reached the expected state";
  return s;
}

TEST(ObservabilityMetrics, ValuesFollowAKnownSequenceOfJobs) {
  ObsBroker b(kDps);
  ASSERT_TRUE(b.Start()) << b.proc().Log();
  zmq::context_t ctx;
  Client c(ctx, b.proc().frontend);
  TestWorker w(ctx, b.proc().backend, kWorker);
  ASSERT_TRUE(w.Register({"lab1"}, 2));

  // 1. app v1 on lab1 and lab2: lab2 has no worker (stays queued); lab1 is deferred (in use),
  //    with a retry far enough away that it stays deferred.
  auto app = Refresh("app", 1, {"lab1", "lab2"});
  app.policy.retry_base_ms = 3'600'000;
  app.policy.retry_max_ms = 3'600'000;
  auto refs = c.Submit(app);
  ASSERT_EQ(refs.size(), 2u);
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 1; }, 10s));
  w.Result(w.dispatches[0], msg::Outcome::kDeferred, {"bin/app"});
  ASSERT_TRUE(WaitForState(w, c, refs[0].dp == "lab1" ? refs[0].id : refs[1].id, msg::JobState::kDeferred));

  // 2. tools v3 on lab1: applied.
  auto tools = c.Submit(Refresh("tools", 3, {"lab1"}));
  ASSERT_EQ(tools.size(), 1u);
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 2; }, 10s));
  w.Result(w.dispatches[1], msg::Outcome::kApplied);
  ASSERT_TRUE(WaitForState(w, c, tools[0].id, msg::JobState::kApplied));

  // 3. The worker reports its metrics in a heartbeat.
  msg::WorkerMetrics wm;
  wm.refreshes = 1;
  wm.refresh_ms_total = 1500;
  wm.bytes_copied = 4096;
  wm.bytes_linked = 8192;
  wm.inuse_checks = 3;
  wm.inuse_check_us_total = 2500;
  w.Send(msg::Heartbeat{0, wm});

  std::map<std::string, std::string> types;
  std::string text;
  // 3 jobs created (queued) + 2 dispatches (running) + deferred + applied = 7 state events.
  Samples s = ScrapeUntil(
      b, w,
      [&](const Samples& x) {
        return x.count(W("despool_worker_refreshes_total")) && x.count("despool_last_event_seq") &&
               x.at("despool_last_event_seq") == 7;
      },
      &types, &text);
  ASSERT_FALSE(s.empty());

  EXPECT_EQ(Value(s, "despool_store_up"), 1);
  EXPECT_EQ(Value(s, "despool_jobs{state=\"queued\"}"), 1);
  EXPECT_EQ(Value(s, "despool_jobs{state=\"running\"}"), 0);
  EXPECT_EQ(Value(s, "despool_jobs{state=\"deferred\"}"), 1);
  EXPECT_EQ(Value(s, "despool_jobs{state=\"applied\"}"), 1);
  for (const char* st : {"up-to-date", "superseded", "cancelled", "dead"}) {
    EXPECT_EQ(Value(s, std::string("despool_jobs{state=\"") + st + "\"}"), 0) << st;
  }
  EXPECT_EQ(Value(s, "despool_queue_depth"), 1);
  EXPECT_EQ(Value(s, "despool_retry_backlog"), 1);
  EXPECT_GE(Value(s, "despool_oldest_queued_age_seconds"), 0);
  EXPECT_LT(Value(s, "despool_oldest_queued_age_seconds"), 120);

  EXPECT_EQ(Value(s, "despool_dp_queued_jobs{dp=\"lab1\"}"), 0);
  EXPECT_EQ(Value(s, "despool_dp_queued_jobs{dp=\"lab2\"}"), 1);
  EXPECT_EQ(Value(s, "despool_dp_deferred_jobs{dp=\"lab1\"}"), 1);
  EXPECT_EQ(Value(s, "despool_dp_deferred_jobs{dp=\"lab2\"}"), 0);
  EXPECT_EQ(Value(s, "despool_dp_running_jobs{dp=\"lab1\"}"), 0);
  EXPECT_EQ(Value(s, "despool_dp_online{dp=\"lab1\"}"), 1);
  EXPECT_EQ(Value(s, "despool_dp_online{dp=\"lab2\"}"), 0);

  EXPECT_EQ(Value(s, "despool_dispatches_total{kind=\"refresh\"}"), 2);
  EXPECT_EQ(Value(s, "despool_dispatches_total{kind=\"verify\"}"), 0);
  EXPECT_EQ(Value(s, "despool_results_total{outcome=\"deferred\"}"), 1);
  EXPECT_EQ(Value(s, "despool_results_total{outcome=\"applied\"}"), 1);
  EXPECT_EQ(Value(s, "despool_results_total{outcome=\"permanent-error\"}"), 0);
  EXPECT_EQ(Value(s, "despool_job_transitions_total{state=\"queued\"}"), 3);
  EXPECT_EQ(Value(s, "despool_job_transitions_total{state=\"running\"}"), 2);
  EXPECT_EQ(Value(s, "despool_job_transitions_total{state=\"deferred\"}"), 1);
  EXPECT_EQ(Value(s, "despool_job_transitions_total{state=\"applied\"}"), 1);
  EXPECT_EQ(Value(s, "despool_job_transitions_total{state=\"dead\"}"), 0);
  EXPECT_EQ(Value(s, "despool_events_published_total{kind=\"state\"}"), 7);
  EXPECT_EQ(Value(s, "despool_events_dropped_total"), 0);
  EXPECT_EQ(Value(s, "despool_last_event_seq"), 7);

  // Two submits, each acknowledged once after its commit.
  EXPECT_EQ(Value(s, "despool_submit_ack_seconds_count"), 2);
  EXPECT_EQ(Value(s, "despool_submit_ack_seconds_bucket{le=\"+Inf\"}"), 2);
  EXPECT_GT(Value(s, "despool_submit_ack_seconds_sum"), 0);
  EXPECT_LE(Value(s, "despool_submit_ack_seconds_bucket{le=\"0.001\"}"),
            Value(s, "despool_submit_ack_seconds_bucket{le=\"10\"}"));
  const double commits = Value(s, "despool_store_commit_seconds_count");
  EXPECT_GE(commits, 4);  // at least: two submits, two results
  EXPECT_EQ(Value(s, "despool_store_commit_batch_jobs_count"), commits);
  // Every job was written at least once; changes within one round coalesce into one row.
  EXPECT_GE(Value(s, "despool_store_commit_batch_jobs_sum"), 3);
  EXPECT_LE(Value(s, "despool_store_commit_batch_jobs_sum"), 7);
  EXPECT_EQ(Value(s, "despool_due_lateness_seconds_count"), 0);

  EXPECT_EQ(Value(s, "despool_workers_connected"), 1);
  EXPECT_EQ(Value(s, W("despool_worker_capacity")), 2);
  EXPECT_EQ(Value(s, W("despool_worker_running")), 0);
  EXPECT_EQ(Value(s, W("despool_worker_credit")), 2);
  EXPECT_EQ(Value(s, W("despool_worker_draining")), 0);
  EXPECT_EQ(Value(s, W("despool_worker_refreshes_total")), 1);
  EXPECT_DOUBLE_EQ(Value(s, W("despool_worker_refresh_seconds_total")), 1.5);
  EXPECT_EQ(Value(s, W("despool_worker_bytes_copied_total")), 4096);
  EXPECT_EQ(Value(s, W("despool_worker_bytes_linked_total")), 8192);
  EXPECT_EQ(Value(s, W("despool_worker_inuse_checks_total")), 3);
  EXPECT_DOUBLE_EQ(Value(s, W("despool_worker_inuse_check_seconds_total")), 0.0025);

  EXPECT_EQ(types["despool_jobs"], "gauge");
  EXPECT_EQ(types["despool_submit_ack_seconds"], "histogram");
  EXPECT_EQ(types["despool_store_commit_seconds"], "histogram");
  EXPECT_EQ(types["despool_dispatches"], "counter");
  EXPECT_EQ(types["despool_worker_refreshes"], "counter");
  EXPECT_NE(text.find("# TYPE despool_dispatches_total counter"), std::string::npos);

  // The worker leaves: its series go, lab1 goes offline.
  w.Send(msg::Disconnect{"test done"});
  w.silent = true;
  s = ScrapeUntil(b, w, [&](const Samples& x) {
    return x.count("despool_workers_connected") && x.at("despool_workers_connected") == 0;
  });
  EXPECT_EQ(s.count(W("despool_worker_capacity")), 0u);
  EXPECT_EQ(s.count(W("despool_worker_refreshes_total")), 0u);
  EXPECT_EQ(Value(s, "despool_dp_online{dp=\"lab1\"}"), 0);
}

TEST(ObservabilityMetrics, DueRetriesFeedTheLatenessHistogram) {
  ObsBroker b(kDps);
  ASSERT_TRUE(b.Start()) << b.proc().Log();
  zmq::context_t ctx;
  Client c(ctx, b.proc().frontend);
  TestWorker w(ctx, b.proc().backend, kWorker);
  ASSERT_TRUE(w.Register({"lab1"}, 1));
  auto in = Refresh("app", 1, {"lab1"});
  in.policy.retry_base_ms = 50;
  in.policy.retry_max_ms = 50;
  auto refs = c.Submit(in);
  ASSERT_EQ(refs.size(), 1u);
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 1; }, 10s));
  w.Result(w.dispatches[0], msg::Outcome::kDeferred, {"bin/app"});
  // The retry comes due and is dispatched again.
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 2; }, 15s));
  w.Result(w.dispatches[1], msg::Outcome::kApplied);
  ASSERT_TRUE(WaitForState(w, c, refs[0].id, msg::JobState::kApplied));
  Samples s = ScrapeUntil(b, w, [&](const Samples& x) {
    return x.count("despool_due_lateness_seconds_count") && x.at("despool_due_lateness_seconds_count") == 1;
  });
  EXPECT_EQ(Value(s, "despool_due_lateness_seconds_bucket{le=\"+Inf\"}"), 1);
  EXPECT_GE(Value(s, "despool_due_lateness_seconds_sum"), 0);
  EXPECT_EQ(Value(s, "despool_results_total{outcome=\"deferred\"}"), 1);
  EXPECT_EQ(Value(s, "despool_results_total{outcome=\"applied\"}"), 1);
  EXPECT_EQ(Value(s, "despool_dispatches_total{kind=\"refresh\"}"), 2);
  EXPECT_EQ(Value(s, "despool_job_transitions_total{state=\"deferred\"}"), 1);
}

}  // namespace
}  // namespace despool::obs::testing
