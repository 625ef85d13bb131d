// The worker service's pieces in-process: settings, result mapping, the release watcher.
#include <gtest/gtest.h>

#include <thread>

#include "despool/workers/service/executor.h"
#include "despool/workers/service/release_watcher.h"
#include "despool/workers/service/settings.h"
#include "workers/test_holders.h"
#include "workers/worker_harness.h"

namespace despool::workers::service {
namespace {

using despool::workertest::TempDir;
using despool::workertest::WriteFile;
using std::chrono::milliseconds;

TEST(WorkerSettingsTest, ParsesDpFlags) {
  auto ok = ParseDpSpec("lab1=/srv/x=y");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->name, "lab1");
  EXPECT_EQ(ok->root, "/srv/x=y");
  EXPECT_FALSE(ParseDpSpec("lab1").ok());
  EXPECT_FALSE(ParseDpSpec("lab1=").ok());
  EXPECT_FALSE(ParseDpSpec("=/srv").ok());
  auto bad = ParseDpSpec("a/b=/srv");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("a/b"), std::string::npos);
}

TEST(WorkerSettingsTest, LoadsTheExampleConfigAndRejectsUnknownKeys) {
  TempDir tmp;
  WriteFile(tmp / "w.toml",
            "broker = \"tcp://10.0.0.1:7401\"\nname = \"fs-1\"\nconcurrency = 3\nmax_bytes_per_second = 1000\n"
            "[log]\nlevel = \"debug\"\nformat = \"json\"\n[[dp]]\nname = \"lab1\"\nroot = \"/srv/a\"\n"
            "[[dp]]\nname = \"lab2\"\nroot = \"/srv/b\"\n");
  WorkerSettings s;
  ASSERT_TRUE(LoadWorkerConfig(tmp / "w.toml", s).ok());
  EXPECT_EQ(s.broker, "tcp://10.0.0.1:7401");
  EXPECT_EQ(s.name, "fs-1");
  EXPECT_EQ(s.concurrency, 3u);
  EXPECT_EQ(s.max_bytes_per_second, 1000u);
  EXPECT_EQ(s.log_level, "debug");
  EXPECT_EQ(s.log_format, "json");
  ASSERT_EQ(s.dps.size(), 2u);
  EXPECT_EQ(s.dps[1], (DpSpec{"lab2", "/srv/b"}));

  const char* source_dir = std::getenv("DESPOOL_SOURCE_DIR");
  if (source_dir != nullptr) {
    WorkerSettings example;
    EXPECT_TRUE(LoadWorkerConfig(std::string(source_dir) + "/config/worker.toml", example).ok());
  }

  WriteFile(tmp / "bad.toml", "concurency = 3\n");
  Status st = LoadWorkerConfig(tmp / "bad.toml", s);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("concurency"), std::string::npos);
  WriteFile(tmp / "zero.toml", "concurrency = 0\n");
  EXPECT_FALSE(LoadWorkerConfig(tmp / "zero.toml", s).ok());
}

TEST(WorkerSettingsTest, CheckDpsNamesTheFailingDp) {
  TempDir tmp;
  Engine engine;
  std::vector<DpSpec> dps{{"good", tmp / "."}, {"bad", tmp / "nope"}};
  Status st = CheckDps(engine, dps);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("'bad'"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find(tmp / "nope"), std::string::npos) << st.error().message;
  std::vector<DpSpec> twice{{"a", tmp.path()}, {"a", tmp.path()}};
  EXPECT_FALSE(CheckDps(engine, twice).ok());
  std::vector<DpSpec> fine{{"a", tmp.path() + "/"}};
  ASSERT_TRUE(CheckDps(engine, fine).ok());
  EXPECT_EQ(fine[0].root, tmp.path());
}

TEST(WorkerResultTest, MapsEveryRefreshOutcome) {
  msg::Dispatch d;
  d.job_id = "j-1";
  d.attempt = 7;
  RefreshOutcome o;
  o.kind = OutcomeKind::kApplied;
  o.installed_version = 3;
  o.stats.files_total = 5;
  o.stats.bytes_copied = 100;
  o.stats.total = milliseconds(42);
  msg::JobResult r = ResultFromOutcome(d, o, nullptr);
  EXPECT_EQ(r.job_id, "j-1");
  EXPECT_EQ(r.attempt, 7u);
  EXPECT_EQ(r.outcome, msg::Outcome::kApplied);
  ASSERT_TRUE(r.stats.has_value());
  EXPECT_EQ(r.stats->files_total, 5u);
  EXPECT_EQ(r.stats->duration_ms, 42u);
  EXPECT_EQ(r.installed_version, std::optional<std::uint64_t>(3));

  o = RefreshOutcome{};
  o.kind = OutcomeKind::kDeferred;
  o.in_use.in_use = {"a", "b/c"};
  o.in_use.holders = {{12, "sleep", "a"}};
  o.suggested_delay = milliseconds(30000);
  o.message = "2 file(s) in use";
  JobEffects fx;
  r = ResultFromOutcome(d, o, &fx);
  EXPECT_EQ(r.outcome, msg::Outcome::kDeferred);
  EXPECT_EQ(r.in_use, (std::vector<std::string>{"a", "b/c"}));
  ASSERT_EQ(r.holders.size(), 1u);
  EXPECT_EQ(r.holders[0], (msg::Holder{12, "sleep", "a"}));
  EXPECT_EQ(r.suggested_delay_ms, std::optional<std::uint64_t>(30000));
  EXPECT_EQ(r.error, std::optional<std::string>("2 file(s) in use"));
  EXPECT_EQ(fx.in_use_all.size(), 2u);
  ASSERT_EQ(fx.holders_all.size(), 1u);
  EXPECT_EQ(fx.holders_all[0].pid, 12);

  const std::pair<OutcomeKind, msg::Outcome> rest[] = {
      {OutcomeKind::kUpToDate, msg::Outcome::kUpToDate},
      {OutcomeKind::kRetryableError, msg::Outcome::kRetryableError},
      {OutcomeKind::kPermanentError, msg::Outcome::kPermanentError},
      {OutcomeKind::kCancelled, msg::Outcome::kCancelled}};
  for (const auto& [kind, outcome] : rest) {
    o = RefreshOutcome{};
    o.kind = kind;
    o.message = "why";
    r = ResultFromOutcome(d, o, nullptr);
    EXPECT_EQ(r.outcome, outcome) << OutcomeKindName(kind);
    EXPECT_TRUE(r.in_use.empty());
    EXPECT_FALSE(r.stats.has_value());
    if (kind != OutcomeKind::kUpToDate) {
      EXPECT_EQ(r.error, std::optional<std::string>("why"));
    }
  }
}

TEST(WorkerResultTest, CapsInUsePathsInTheResultButWatchesAll) {
  msg::Dispatch d;
  RefreshOutcome o;
  o.kind = OutcomeKind::kDeferred;
  for (std::size_t i = 0; i < kMaxResultPaths + 10; ++i) o.in_use.in_use.push_back("f" + std::to_string(i));
  JobEffects fx;
  msg::JobResult r = ResultFromOutcome(d, o, &fx);
  EXPECT_EQ(r.in_use.size(), kMaxResultPaths);
  EXPECT_EQ(fx.in_use_all.size(), kMaxResultPaths + 10);
}

class ReleaseWatcherTest : public ::testing::TestWithParam<despool::testing::HolderProcess::Mode> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(IgnoreLeaseBreakSignal().ok());
    WriteFile(tmp_ / "pkg/held", std::string(8192, 'h'));
    WriteFile(tmp_ / "pkg/free", "f");
  }
  // Polls the watcher like the worker's loop does, until it reports a release or `within`.
  std::vector<Released> PollUntilReleased(ReleaseWatcher& w, milliseconds within) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < deadline) {
      std::vector<zmq_pollitem_t> items;
      w.AppendPollItems(items);
      auto now = std::chrono::steady_clock::now();
      auto next = w.NextDeadline().value_or(deadline);
      auto wait = std::clamp(std::chrono::duration_cast<milliseconds>(next - now), milliseconds(0), milliseconds(50));
      if (!items.empty()) {
        zmq::poll(items, wait);
      } else {
        std::this_thread::sleep_for(wait);  // nothing to poll: wait for the next re-probe
      }
      auto released = w.Process(items, std::chrono::steady_clock::now());
      if (!released.empty()) return released;
    }
    return {};
  }
  TempDir tmp_;
};

TEST_P(ReleaseWatcherTest, ReportsReleaseSoonAfterTheHolderGoes) {
  despool::testing::HolderProcess holder(GetParam(), tmp_ / "pkg/held");
  ASSERT_TRUE(holder.ready()) << holder.error();
  ReleaseWatcher w(ReleaseWatcherOptions{}, MakeAutoProbe());
  ASSERT_TRUE(w.Init().ok());
  WatchRequest req{"job-1", 4, tmp_ / "pkg", {"held", "free"}, {{holder.pid(), "inuse-holder", "held"}}};
  ASSERT_TRUE(w.Watch(req, std::chrono::steady_clock::now()));
  EXPECT_EQ(w.inotify_watches(), 2u);
  EXPECT_EQ(w.pidfds(), 1u);
  // Still held: the immediate re-probe must not report it, and it narrows the watch to "held".
  EXPECT_TRUE(PollUntilReleased(w, milliseconds(300)).empty());
  EXPECT_EQ(w.inotify_watches(), 1u);
  const auto t0 = std::chrono::steady_clock::now();
  holder.Stop();
  auto released = PollUntilReleased(w, milliseconds(2000));
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0].job_id, "job-1");
  EXPECT_EQ(released[0].attempt, 4u);
  EXPECT_LT(took, milliseconds(1000));
  EXPECT_FALSE(w.Watching("job-1"));
  EXPECT_EQ(w.inotify_watches(), 0u);
  EXPECT_EQ(w.pidfds(), 0u);
}

TEST_P(ReleaseWatcherTest, WithoutNamedHoldersFallsBackToReprobing) {
  despool::testing::HolderProcess holder(GetParam(), tmp_ / "pkg/held");
  ASSERT_TRUE(holder.ready()) << holder.error();
  ReleaseWatcherOptions options;
  options.reprobe_interval = milliseconds(100);
  ReleaseWatcher w(options, MakeLeaseProbe());  // names nobody: no pidfd
  ASSERT_TRUE(w.Init().ok());
  ASSERT_TRUE(w.Watch(WatchRequest{"job-2", 1, tmp_ / "pkg", {"held"}, {}}, std::chrono::steady_clock::now()));
  EXPECT_TRUE(PollUntilReleased(w, milliseconds(300)).empty());
  holder.Stop();
  auto released = PollUntilReleased(w, milliseconds(2000));
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0].job_id, "job-2");
}

INSTANTIATE_TEST_SUITE_P(Modes, ReleaseWatcherTest,
                         ::testing::Values(despool::testing::HolderProcess::Mode::kOpen,
                                           despool::testing::HolderProcess::Mode::kMmap),
                         [](const auto& info) {
                           return info.param == despool::testing::HolderProcess::Mode::kOpen ? std::string("Open")
                                                                                              : std::string("Mmap");
                         });

TEST(ReleaseWatcherCapTest, RefusesWhatDoesNotFitTheCap) {
  TempDir tmp;
  WriteFile(tmp / "pkg/a", "a");
  WriteFile(tmp / "pkg/b", "b");
  ReleaseWatcherOptions options;
  options.max_watches = 1;
  ReleaseWatcher w(options, MakeLeaseProbe());
  ASSERT_TRUE(w.Init().ok());
  EXPECT_FALSE(w.Watch(WatchRequest{"j", 1, tmp / "pkg", {"a", "b"}, {}}, std::chrono::steady_clock::now()));
  EXPECT_EQ(w.jobs(), 0u);
  EXPECT_TRUE(w.Watch(WatchRequest{"j", 1, tmp / "pkg", {"a"}, {}}, std::chrono::steady_clock::now()));
  w.Drop("j");
  EXPECT_EQ(w.inotify_watches(), 0u);
}

// A probe that costs time and finds everything free.
class SlowFreeProbe final : public InUseProbe {
 public:
  const char* name() const override { return "slow-free"; }
  Result<InUseReport> Check(int, const std::vector<std::string>&) override {
    std::this_thread::sleep_for(milliseconds(5));  // stands in for the cost of a /proc scan
    ++calls;
    return InUseReport{};
  }
  int calls = 0;
};

TEST(ReleaseWatcherCapTest, ProbingStaysWithinItsTimeBudget) {
  TempDir tmp;
  WriteFile(tmp / "pkg/a", "a");
  ReleaseWatcherOptions options;
  options.probe_budget_per_second = milliseconds(1);
  auto probe = std::make_unique<SlowFreeProbe>();
  SlowFreeProbe* raw = probe.get();
  ReleaseWatcher w(options, std::move(probe));
  ASSERT_TRUE(w.Init().ok());
  const auto now = std::chrono::steady_clock::now();
  ASSERT_TRUE(w.Watch(WatchRequest{"j1", 1, tmp / "pkg", {"a"}, {}}, now));
  ASSERT_TRUE(w.Watch(WatchRequest{"j2", 1, tmp / "pkg", {"a"}, {}}, now));
  std::vector<zmq_pollitem_t> items;
  w.AppendPollItems(items);
  EXPECT_EQ(w.Process(items, now).size(), 1u) << "one 5 ms probe uses up a 1 ms budget";
  EXPECT_EQ(raw->calls, 1);
  w.AppendPollItems(items);
  EXPECT_TRUE(w.Process(items, now + milliseconds(10)).empty());
  ASSERT_TRUE(w.NextDeadline().has_value());
  EXPECT_GE(*w.NextDeadline(), now + std::chrono::seconds(1)) << "throttled probes must not busy-loop";
  w.AppendPollItems(items);
  EXPECT_EQ(w.Process(items, now + std::chrono::seconds(1)).size(), 1u);
  EXPECT_EQ(w.jobs(), 0u);
}

}  // namespace
}  // namespace despool::workers::service
