// despool-worker end to end: the real broker and worker binaries on loopback (issue 6, "Tests").
#include <gtest/gtest.h>

#include <set>

#include "workers/test_holders.h"
#include "workers/worker_harness.h"

namespace despool::workertest {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class WorkerSystemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (BinDir().empty() || !fs::exists(BinDir() + "/despool-worker") || !fs::exists(BinDir() + "/despool-broker")) {
      GTEST_SKIP() << "DESPOOL_BIN_DIR does not hold despool-broker and despool-worker";
    }
    dp_ = tmp_ / "dp";
    fs::create_directories(dp_);
  }

  void StartBroker(milliseconds heartbeat = milliseconds(250)) {
    broker_ = std::make_unique<Broker>(tmp_.path(), heartbeat);
    fe_ = std::make_unique<Frontend>(broker_->endpoints().frontend);
  }

  std::unique_ptr<Process> Worker(const std::string& name, const std::vector<std::string>& extra = {}) {
    auto w = StartWorker(tmp_.path(), broker_->endpoints().backend, name, {"lab1=" + dp_}, extra);
    const bool registered = WaitFor([&] { return fe_->HasWorker(name); }, seconds(15));
    EXPECT_TRUE(registered) << name << " did not register:\n" << w->log();
    return w;
  }

  // Source trees src/<package>@<version>: `files` files of `bytes` bytes.
  std::string Source(const std::string& package, int version, int files = 4, std::size_t bytes = 512) {
    const std::string dir = tmp_ / ("src/" + package + "@" + std::to_string(version));
    if (!fs::exists(dir)) MakeSource(dir, files, bytes, package + "@" + std::to_string(version));
    return dir;
  }

  bool StagingBusy() const {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dp_ + "/.despool/staging", ec)) {
      (void)e;
      return true;
    }
    return false;
  }

  std::string Logs() const {
    std::string out = broker_ ? "--- broker:\n" + broker_->log() : "";
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(tmp_.path(), ec)) {
      const std::string name = e.path().filename().string();
      if (name.size() > 4 && name.substr(name.size() - 4) == ".log" && name != "broker.log") {
        out += "--- " + name + ":\n" + ReadFile(e.path().string());
      }
    }
    return out;
  }

  TempDir tmp_;
  std::string dp_;
  std::unique_ptr<Broker> broker_;
  std::unique_ptr<Frontend> fe_;
};

TEST_F(WorkerSystemTest, BadDpRootExitsTwoNamingIt) {
  {
    Process w({BinDir() + "/despool-worker", "--broker", "tcp://127.0.0.1:1", "--dp", "lab1=" + tmp_ / "missing"},
              tmp_ / "bad1.log");
    EXPECT_EQ(w.Wait(seconds(20)), 2);
    const std::string log = w.log();
    EXPECT_NE(log.find("lab1"), std::string::npos) << log;
    EXPECT_NE(log.find(tmp_ / "missing"), std::string::npos) << log;
  }
  {
    WriteFile(tmp_ / "a-file", "x");
    Process w({BinDir() + "/despool-worker", "--dp", "good=" + dp_, "--dp", "lab2=" + tmp_ / "a-file"},
              tmp_ / "bad2.log");
    EXPECT_EQ(w.Wait(seconds(20)), 2);
    EXPECT_NE(w.log().find("lab2"), std::string::npos) << w.log();
  }
  {
    Process w({BinDir() + "/despool-worker", "--dp", "bad/name=" + dp_}, tmp_ / "bad3.log");
    EXPECT_EQ(w.Wait(seconds(20)), 2);
    EXPECT_NE(w.log().find("bad/name"), std::string::npos) << w.log();
  }
}

TEST_F(WorkerSystemTest, SeveralWorkersShareOneDpEachJobAppliedOnce) {
  StartBroker();
  auto w1 = Worker("w1");
  auto w2 = Worker("w2");
  auto w3 = Worker("w3");
  std::vector<std::string> ids;
  std::map<std::string, std::string> source_of;
  for (int i = 0; i < 24; ++i) {
    const std::string pkg = "pkg" + std::to_string(i);
    const std::string src = Source(pkg, 1);
    source_of[pkg] = src;
    for (auto& id : fe_->Submit(Refresh(pkg, 1, src, "lab1"))) ids.push_back(id);
  }
  ASSERT_TRUE(fe_->WaitTerminal(ids, seconds(60))) << Logs();
  std::set<std::string> workers_used;
  for (const auto& id : ids) {
    const msg::JobInfo j = fe_->Job(id);
    EXPECT_EQ(j.state, msg::JobState::kApplied) << id << " " << j.last_error.value_or("") << "\n" << Logs();
    EXPECT_EQ(j.attempts, 0u) << id;
    if (j.worker) workers_used.insert(*j.worker);
    EXPECT_EQ(Snapshot(dp_ + "/" + j.package), Snapshot(source_of[j.package])) << j.package;
  }
  EXPECT_GE(workers_used.size(), 2u) << "the load was not shared";
  for (auto* w : {w1.get(), w2.get(), w3.get()}) EXPECT_EQ(w->Terminate(), 0) << w->log();
}

TEST_F(WorkerSystemTest, WorkerAddedMidLoadTakesWork) {
  StartBroker();
  // ~0.3 s per job on w1 alone: 2 MiB each at 4 MiB/s (the bucket's first MiB is a burst).
  auto w1 = Worker("w1", {"--concurrency", "1", "--max-bytes-per-second", "4194304"});
  std::vector<std::string> ids;
  for (int i = 0; i < 12; ++i) {
    const std::string pkg = "big" + std::to_string(i);
    for (auto& id : fe_->Submit(Refresh(pkg, 1, Source(pkg, 1, 1, 2u << 20), "lab1"))) ids.push_back(id);
  }
  ASSERT_TRUE(WaitFor([&] { return fe_->Job(ids[0]).state == msg::JobState::kApplied; }, seconds(30))) << Logs();
  auto w2 = Worker("w2");
  ASSERT_TRUE(fe_->WaitTerminal(ids, seconds(60))) << Logs();
  int on_w2 = 0;
  for (const auto& id : ids) {
    const msg::JobInfo j = fe_->Job(id);
    EXPECT_EQ(j.state, msg::JobState::kApplied) << id;
    if (j.worker == std::optional<std::string>("w2")) ++on_w2;
  }
  EXPECT_GT(on_w2, 0) << "the worker added mid-load took no job\n" << Logs();
  EXPECT_EQ(w1->Terminate(), 0);
  EXPECT_EQ(w2->Terminate(), 0);
}

TEST_F(WorkerSystemTest, SigtermMidLoadLosesNothing) {
  StartBroker();
  // w1 drains with a short deadline, so its running copies are cancelled (live untouched) and
  // requeued; w2 finishes everything.
  auto w1 = Worker("w1", {"--max-bytes-per-second", "3145728", "--drain-timeout", "300ms"});
  auto w2 = Worker("w2", {"--max-bytes-per-second", "6291456"});
  std::vector<std::string> ids;
  std::map<std::string, std::string> source_of;
  for (int i = 0; i < 10; ++i) {
    const std::string pkg = "p" + std::to_string(i);
    source_of[pkg] = Source(pkg, 1, 1, 3u << 20);
    for (auto& id : fe_->Submit(Refresh(pkg, 1, source_of[pkg], "lab1"))) ids.push_back(id);
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        for (const auto& w : fe_->Workers()) {
          if (w.name == "w1" && w.running > 0) return true;
        }
        return false;
      },
      seconds(30)))
      << Logs();
  EXPECT_EQ(w1->Terminate(), 0) << w1->log();
  ASSERT_TRUE(fe_->WaitTerminal(ids, seconds(60))) << Logs();
  for (const auto& id : ids) {
    const msg::JobInfo j = fe_->Job(id);
    EXPECT_EQ(j.state, msg::JobState::kApplied) << id << " " << j.last_error.value_or("") << "\n" << Logs();
    EXPECT_EQ(j.attempts, 0u) << id;
    EXPECT_EQ(Snapshot(dp_ + "/" + j.package), Snapshot(source_of[j.package])) << j.package;
  }
  EXPECT_FALSE(fe_->HasWorker("w1"));
  EXPECT_EQ(w2->Terminate(), 0);
}

TEST_F(WorkerSystemTest, VerifyFindsChangedFileAndRepairRestoresIt) {
  StartBroker();
  auto w = Worker("w1");
  const std::string src = Source("app", 1);
  auto ids = fe_->Submit(Refresh("app", 1, src, "lab1"));
  ASSERT_TRUE(fe_->WaitTerminal(ids, seconds(30))) << Logs();
  ASSERT_EQ(fe_->Job(ids[0]).state, msg::JobState::kApplied);
  const std::string victim = dp_ + "/app/d1/f1.dat";
  const std::string original = ReadFile(victim);
  std::string changed = original;
  changed[0] = changed[0] == 'x' ? 'y' : 'x';
  WriteFile(victim, changed);  // behind the worker's back

  auto verify = fe_->Verify("lab1", "app", false);
  ASSERT_EQ(verify.size(), 1u);
  ASSERT_TRUE(fe_->WaitTerminal(verify, seconds(30))) << Logs();
  msg::JobInfo v = fe_->Job(verify[0]);
  EXPECT_EQ(v.state, msg::JobState::kApplied) << v.last_error.value_or("");
  ASSERT_TRUE(v.report.has_value());
  EXPECT_EQ(v.report->changed, std::vector<std::string>{"d1/f1.dat"});
  EXPECT_TRUE(v.report->missing.empty());
  EXPECT_TRUE(v.report->extra.empty());
  EXPECT_EQ(ReadFile(victim), changed) << "verify must not modify anything";

  // Every package of the DP: paths carry the package.
  auto all = fe_->Verify("lab1", "", false);
  ASSERT_TRUE(fe_->WaitTerminal(all, seconds(30))) << Logs();
  v = fe_->Job(all[0]);
  ASSERT_TRUE(v.report.has_value());
  EXPECT_EQ(v.report->changed, std::vector<std::string>{"app/d1/f1.dat"});

  auto repair = fe_->Verify("lab1", "app", true);
  ASSERT_TRUE(fe_->WaitTerminal(repair, seconds(30))) << Logs();
  v = fe_->Job(repair[0]);
  EXPECT_EQ(v.state, msg::JobState::kApplied) << v.last_error.value_or("");
  EXPECT_EQ(ReadFile(victim), original);
  EXPECT_EQ(Snapshot(dp_ + "/app"), Snapshot(src));

  auto again = fe_->Verify("lab1", "app", false);
  ASSERT_TRUE(fe_->WaitTerminal(again, seconds(30))) << Logs();
  v = fe_->Job(again[0]);
  ASSERT_TRUE(v.report.has_value());
  EXPECT_TRUE(v.report->changed.empty() && v.report->missing.empty() && v.report->extra.empty());
  EXPECT_EQ(w->Terminate(), 0);
}

// A deferred job whose backoff step is minutes applies within a second of the holder letting
// go: the worker watches the file and the holder and sends a release hint.

class WorkerReleaseTest : public WorkerSystemTest,
                          public ::testing::WithParamInterface<testing::HolderProcess::Mode> {};

TEST_P(WorkerReleaseTest, HeldFileThenReleasedAppliesWithinASecond) {
  StartBroker();
  auto w = Worker("w1", {"--log-level", "debug"});
  auto v1 = fe_->Submit(Refresh("tool", 1, Source("tool", 1), "lab1"));
  ASSERT_TRUE(fe_->WaitTerminal(v1, seconds(30))) << Logs();
  const std::string held = dp_ + "/tool/d0/f0.dat";
  testing::HolderProcess holder(GetParam(), held);
  ASSERT_TRUE(holder.ready()) << holder.error();

  auto v2 = fe_->Submit(Refresh("tool", 2, Source("tool", 2), "lab1", std::chrono::minutes(5)));
  ASSERT_TRUE(WaitFor([&] { return fe_->Job(v2[0]).state == msg::JobState::kDeferred; }, seconds(30))) << Logs();
  msg::JobInfo j = fe_->Job(v2[0]);
  EXPECT_EQ(j.in_use, std::vector<std::string>{"d0/f0.dat"});
  ASSERT_FALSE(j.holders.empty());
  EXPECT_EQ(j.holders[0].pid, holder.pid());
  ASSERT_TRUE(j.next_attempt_at_ms.has_value());
  EXPECT_GT(*j.next_attempt_at_ms - j.updated_at_ms, 60'000) << "the backoff step should be minutes";

  const auto released = Clock::now();
  holder.Stop();
  const bool applied = WaitFor([&] { return fe_->Job(v2[0]).state == msg::JobState::kApplied; }, seconds(1));
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - released).count();
  EXPECT_TRUE(applied) << "not applied within 1 s of the release (state "
                       << msg::ToString(fe_->Job(v2[0]).state) << ")\n" << Logs();
  ASSERT_TRUE(fe_->WaitTerminal(v2, seconds(30)));
  EXPECT_EQ(fe_->Job(v2[0]).state, msg::JobState::kApplied);
  EXPECT_EQ(Snapshot(dp_ + "/tool"), Snapshot(Source("tool", 2)));
  RecordProperty("release_to_applied_ms", std::to_string(took));
  EXPECT_EQ(w->Terminate(), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, WorkerReleaseTest,
                         ::testing::Values(testing::HolderProcess::Mode::kOpen, testing::HolderProcess::Mode::kMmap),
                         [](const auto& info) {
                           return info.param == testing::HolderProcess::Mode::kOpen ? std::string("Open")
                                                                                    : std::string("Mmap");
                         });

TEST_F(WorkerSystemTest, Kill9MidRefreshRedispatchesToAnotherWorker) {
  StartBroker();
  auto w1 = Worker("w1", {"--max-bytes-per-second", "1048576"});
  const std::string src = Source("huge", 1, 2, 3u << 20);  // ~5 s at 1 MiB/s
  auto ids = fe_->Submit(Refresh("huge", 1, src, "lab1"));
  ASSERT_TRUE(WaitFor(
      [&] {
        const msg::JobInfo j = fe_->Job(ids[0]);
        return j.state == msg::JobState::kRunning && StagingBusy();
      },
      seconds(30)))
      << Logs();
  w1->Kill();
  auto w2 = Worker("w2");
  ASSERT_TRUE(fe_->WaitTerminal(ids, seconds(30))) << Logs();
  const msg::JobInfo j = fe_->Job(ids[0]);
  EXPECT_EQ(j.state, msg::JobState::kApplied) << j.last_error.value_or("") << "\n" << Logs();
  EXPECT_EQ(j.worker, std::optional<std::string>("w2"));
  EXPECT_EQ(j.attempts, 0u) << "a lost worker's requeue is not an attempt";
  EXPECT_EQ(Snapshot(dp_ + "/huge"), Snapshot(src));
  EXPECT_EQ(w2->Terminate(), 0);
}

TEST_F(WorkerSystemTest, BrokerRestartedUnderRunningWorkerGetsPendingResult) {
  StartBroker();
  auto w1 = Worker("w1", {"--max-bytes-per-second", "2097152"});
  const std::string src = Source("slow", 1, 1, 5u << 20);  // ~2 s at 2 MiB/s
  auto ids = fe_->Submit(Refresh("slow", 1, src, "lab1"));
  ASSERT_TRUE(WaitFor([&] { return fe_->Job(ids[0]).state == msg::JobState::kRunning && StagingBusy(); },
                      seconds(30)))
      << Logs();
  broker_->Restart();  // kill -9, then the same ports and store
  ASSERT_TRUE(fe_->WaitTerminal(ids, seconds(30))) << Logs();
  const msg::JobInfo j = fe_->Job(ids[0]);
  // applied (not up-to-date): the run that was in progress delivered its result.
  EXPECT_EQ(j.state, msg::JobState::kApplied) << Logs();
  EXPECT_EQ(j.attempts, 0u);
  EXPECT_TRUE(WaitFor([&] { return fe_->HasWorker("w1"); }, seconds(15))) << "w1 did not re-register\n" << Logs();
  EXPECT_EQ(Snapshot(dp_ + "/slow"), Snapshot(src));
  EXPECT_EQ(w1->Terminate(), 0);
}

}  // namespace
}  // namespace despool::workertest
