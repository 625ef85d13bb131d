// The dashboard in headless Chromium (polling mode, so --dump-dom returns): a job deferred with
// its in-use file and holder, then applied after the release hint. Screenshots of both states
// go to <build>/test-artifacts/ (DESPOOL_TEST_ARTIFACTS overrides).
#include <future>

#include "observability/obs_harness.h"

namespace despool::obs::testing {
namespace {

const std::string kChromium = "/usr/bin/chromium";

std::string ArtifactDir() {
  const char* env = std::getenv("DESPOOL_TEST_ARTIFACTS");
  std::string dir = env && *env ? env : BinDir() + "/../test-artifacts";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  return dir;
}

std::vector<std::string> ChromiumArgs(const TempDir& dir, const std::string& profile) {
  return {kChromium,
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-quic",
          "--no-first-run",
          "--disable-background-networking",
          "--disable-component-update",
          "--disable-sync",
          "--user-data-dir=" + (dir / profile),
          "--virtual-time-budget=3000"};
}

// Runs Chromium (bounded: 60 s) while the scripted worker keeps heartbeating.
RunResult Chromium(TestWorker& w, std::vector<std::string> args, const TempDir& dir) {
  auto fut = std::async(std::launch::async, [args, &dir] { return RunProgram(args, 60s, dir / "chromium.err"); });
  w.PumpUntil([&] { return fut.wait_for(0s) == std::future_status::ready; }, 90s);
  return fut.get();
}

std::string DumpDom(TestWorker& w, const ObsBroker& b, const TempDir& dir, const std::string& profile) {
  auto args = ChromiumArgs(dir, profile);
  args.push_back("--dump-dom");
  args.push_back(b.url + "/?poll=500");
  auto r = Chromium(w, args, dir);
  EXPECT_EQ(r.exit_code, 0) << "chromium --dump-dom failed";
  return r.out;
}

void Screenshot(TestWorker& w, const ObsBroker& b, const TempDir& dir, const std::string& name) {
  const std::string out = ArtifactDir() + "/" + name;
  std::filesystem::remove(out);
  auto args = ChromiumArgs(dir, "shot-" + name);
  args.push_back("--window-size=1280,1000");
  args.push_back("--screenshot=" + out);
  args.push_back(b.url + "/?poll=500");
  auto r = Chromium(w, args, dir);
  EXPECT_EQ(r.exit_code, 0) << "chromium --screenshot failed";
  EXPECT_TRUE(std::filesystem::exists(out)) << out;
}

// The attribute sequence the page renders for a job row (tables and DP package chips).
std::string Row(const std::string& id, const char* state) {
  return "data-job-id=\"" + id + "\" data-state=\"" + state + "\"";
}

TEST(ObservabilityDashboard, ShowsDeferredWithInUseFileThenApplied) {
  if (!std::filesystem::exists(kChromium)) {
    GTEST_SKIP() << "chromium is not installed (" << kChromium << "): scripts/setup installs it";
  }
  ObsBroker b("[dps]\nnames = [\"lab1\", \"lab2\"]\n");
  ASSERT_TRUE(b.Start()) << b.proc().Log();
  TempDir dir;
  zmq::context_t ctx;
  Client c(ctx, b.proc().frontend);
  TestWorker w(ctx, b.proc().backend, "host-a/w1");
  ASSERT_TRUE(w.Register({"lab1"}, 2));

  auto in = Refresh("app", 2, {"lab1"});
  in.policy.retry_base_ms = 3'600'000;  // stays deferred until the release hint
  in.policy.retry_max_ms = 3'600'000;
  auto refs = c.Submit(in);
  ASSERT_EQ(refs.size(), 1u);
  const std::string id = refs[0].id;
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 1; }, 10s));
  const msg::Dispatch first = w.dispatches[0];
  msg::JobResult deferred;
  deferred.job_id = first.job_id;
  deferred.attempt = first.attempt;
  deferred.outcome = msg::Outcome::kDeferred;
  deferred.in_use = {"bin/app.exe"};
  deferred.holders = {{31337, "smbd", "bin/app.exe"}};
  deferred.error = "1 file(s) in use";
  w.Send(deferred);
  ASSERT_TRUE(w.PumpUntil([&] { auto j = c.Status(id); return j && j->state == msg::JobState::kDeferred; }, 10s));

  const std::string dom1 = DumpDom(w, b, dir, "p1");
  EXPECT_NE(dom1.find("data-loaded=\"true\""), std::string::npos) << "the page never loaded its data:\n" << dom1;
  EXPECT_NE(dom1.find(Row(id, "deferred")), std::string::npos) << dom1;
  EXPECT_NE(dom1.find("bin/app.exe (pid 31337 smbd)"), std::string::npos) << dom1;
  EXPECT_NE(dom1.find("1 file(s) in use"), std::string::npos) << dom1;
  EXPECT_NE(dom1.find("data-worker=\"host-a/w1\""), std::string::npos) << dom1;
  EXPECT_NE(dom1.find("data-dp=\"lab2\""), std::string::npos) << dom1;
  EXPECT_EQ(dom1.find(Row(id, "applied")), std::string::npos);
  Screenshot(w, b, dir, "dashboard-deferred.png");

  // The file is released: the worker's hint requeues the job, which is then applied.
  w.Send(msg::ReleaseHint{first.job_id, first.attempt});
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 2; }, 10s));
  msg::JobResult applied;
  applied.job_id = w.dispatches[1].job_id;
  applied.attempt = w.dispatches[1].attempt;
  applied.outcome = msg::Outcome::kApplied;
  applied.stats = msg::ApplyStats{120, 3, 117, 0, 5 << 20, 1 << 20, 850};
  w.Send(applied);
  ASSERT_TRUE(w.PumpUntil([&] { auto j = c.Status(id); return j && j->state == msg::JobState::kApplied; }, 10s));

  const std::string dom2 = DumpDom(w, b, dir, "p2");
  EXPECT_NE(dom2.find("data-loaded=\"true\""), std::string::npos) << dom2;
  EXPECT_NE(dom2.find(Row(id, "applied")), std::string::npos) << dom2;
  EXPECT_EQ(dom2.find(Row(id, "deferred")), std::string::npos) << dom2;
  EXPECT_NE(dom2.find("no deferred jobs"), std::string::npos) << dom2;
  EXPECT_NE(dom2.find("3 of 120 files copied"), std::string::npos) << dom2;
  Screenshot(w, b, dir, "dashboard-applied.png");
}

}  // namespace
}  // namespace despool::obs::testing
