// Crash safety: a crash at every call through the OS interface (the call points come from a
// recording run, not a hand-picked list), then Recover(), must leave exactly the old or the new
// version, a manifest that matches it and no stray files; and a real kill -9 of a child process
// stopped at a named point (mid-copy, mid-switch) by a pipe handshake.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "despool/workers/engine.h"
#include "despool/workers/os.h"
#include "workers/engine_test_util.h"

namespace despool::enginetest {
namespace {

class CrashTest : public ::testing::Test {
 public:  // used by the scenario helpers below
  // Engines without an explicit Os skip fsync (see set_sync_noop): these tests simulate kill -9,
  // for which durability does not matter, and real syncs would make them slow.
  std::unique_ptr<Engine> MakeEngine(workers::Os* os = nullptr,
                                     std::function<void(const char*)> checkpoint = {}) {
    EngineConfig c;
    if (os == nullptr) os = &nosync;
    c.os = os;
    c.probe = std::make_shared<FakeProbe>();
    c.checkpoint = std::move(checkpoint);
    c.threads = engine_threads;
    c.seed_spare = seed_spare;
    return std::make_unique<Engine>(c);
  }

  // After recovery: live is exactly old or new (or absent when there was no old), the manifest
  // says so and verifies clean, nothing stray is left (a complete staged tree of the new version
  // may be kept for reuse, and must then be exact); then a plain refresh completes the job.
  void CheckRecovered(const std::string& root, const Snapshot* old_snap, const Snapshot& new_snap,
                      std::uint64_t old_v, std::uint64_t new_v, const std::string& new_src,
                      const std::string& context) {
    SCOPED_TRACE(context);
    auto e = MakeEngine();
    ASSERT_TRUE(e->Recover(root).ok());
    std::string live = root + "/pkg";
    auto installed = e->InstalledVersion(root, "pkg");
    ASSERT_TRUE(installed.ok());
    if (!fs::exists(live) && !fs::is_symlink(live)) {
      ASSERT_EQ(old_snap, nullptr) << "live package vanished";
      EXPECT_FALSE(installed->has_value());
    } else {
      auto snap = Snap(live);
      bool is_old = old_snap != nullptr && Diff(*old_snap, snap).empty();
      bool is_new = Diff(new_snap, snap).empty();
      ASSERT_TRUE(is_old || is_new) << "live is neither old nor new:\n"
                                    << (old_snap ? Diff(*old_snap, snap) : "") << "--\n"
                                    << Diff(new_snap, snap);
      ASSERT_TRUE(installed->has_value());
      EXPECT_EQ(**installed, is_new ? new_v : old_v);
      auto report = e->Verify(root, "pkg");
      ASSERT_TRUE(report.ok()) << report.error().ToString();
      EXPECT_TRUE(report->clean());
    }
    EXPECT_EQ(Strays(root, "pkg", /*allow_staged=*/true), "");
    std::string staged = root + "/.despool/staging/pkg@" + std::to_string(new_v);
    if (fs::exists(staged) || fs::exists(staged + ".manifest")) {
      EXPECT_TRUE(fs::exists(staged) && fs::exists(staged + ".manifest")) << "half a staged pair";
      if (fs::exists(staged)) {
      EXPECT_EQ(Diff(new_snap, Snap(staged)), "") << "kept staging inexact";
    }
    }
    CancelToken cancel;
    auto out = e->Refresh(Request(root, new_v, new_src), nullptr, cancel);
    EXPECT_TRUE(out.kind == OutcomeKind::kApplied || out.kind == OutcomeKind::kUpToDate)
        << out.message;
    EXPECT_EQ(Diff(new_snap, Snap(live)), "");
    EXPECT_EQ(Strays(root, "pkg"), "");
  }

  TempDir tmp;
  CancelToken cancel;
  FaultInjectingOs nosync;
  // 1: the n-th OS call is the same call in every run. With more, helper threads interleave
  // their (read-only, or copy) calls differently from run to run, so "crash at call n" hits
  // whatever call comes n-th: still a crash at some point of the refresh, with helpers running.
  int engine_threads = 1;
  // Whether a first install seeds the package's spare (EngineConfig::seed_spare).
  bool seed_spare = true;
  CrashTest() { nosync.set_sync_noop(true); }
};

// v2 from v1: some files unchanged (linked), some changed, one removed, one added.
void MakePair(const std::string& v1, const std::string& v2) {
  MakeVersion(v1, 1, TreeOptions{5, 2, true, true, 300});
  MakeVersion(v2, 1, TreeOptions{5, 2, true, true, 300});
  WriteFile(v2 + "/d1/f1.bin", "changed", 0644, 1800000000);
  fs::remove(v2 + "/f2.bin");
  WriteFile(v2 + "/added/new.txt", "new", 0600, 1800000001);
  SetMtime(v2 + "/added", 1650000000);
  SetMtime(v2 + "/d1", 1650000000);
  SetMtime(v2, 1650000002);
}

// with_spare: v0 was installed before v1, so the v2 staging starts from the retired v0 tree,
// which has an extra file, an extra dir, and a file where v2 has a directory. Without it the
// v2 staging starts from the spare the v1 install seeded (t->seed_spare), or from scratch.
// A first install with t->seed_spare includes the seeding's calls.
void CrashEverywhere(CrashTest* t, bool first_install, FaultRule::Action action,
                     bool with_spare = false) {
  std::string v0 = t->tmp / "v0", v1 = t->tmp / "v1", v2 = t->tmp / "v2";
  MakePair(v1, v2);
  if (with_spare) {
    MakeVersion(v0, 0, TreeOptions{5, 2, true, false, 300});
    WriteFile(v0 + "/added", "a file where v2 has a dir", 0644, 1700000000);
    WriteFile(v0 + "/gone/old.txt", "only in v0", 0644, 1700000000);
    WriteFile(v0 + "/d1/f1.bin", "v0 content", 0644, 1600000000);
  }
  auto old_snap = Snap(v1), new_snap = Snap(v2);
  auto setup = [&](const std::string& root) {
    fs::create_directories(root);
    if (with_spare) {
      ASSERT_EQ(t->MakeEngine()->Refresh(Request(root, 0, v0), nullptr, t->cancel).kind,
                OutcomeKind::kApplied);
    }
    if (!first_install) {
      auto e = t->MakeEngine();
      ASSERT_EQ(e->Refresh(Request(root, 1, v1), nullptr, t->cancel).kind, OutcomeKind::kApplied);
    }
    if (with_spare || (!first_install && t->seed_spare)) {
      ASSERT_TRUE(fs::exists(root + "/.despool/staging/pkg@spare"));
    }
  };
  // Recording run: every call point.
  std::string rec_root = t->tmp / "rec";
  setup(rec_root);
  FaultInjectingOs recorder;
  recorder.set_recording(true);
  recorder.set_sync_noop(true);
  {
    auto e = t->MakeEngine(&recorder);
    auto out = e->Refresh(Request(rec_root, 2, v2), nullptr, t->cancel);
    ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
  }
  auto calls = recorder.calls();
  ASSERT_GT(calls.size(), 50u);
  std::cout << "[          ] " << calls.size() << " call points\n";
  std::set<std::string> ops;
  for (const auto& c : calls) ops.insert(c.op);
  for (const char* op : {"RenameAt2", "LinkAt", "CopyFileRange", "SyncFileRange", "Syncfs", "Fsync",
                         "UnlinkAt"}) {
    // Nothing to link beside a first install, nor beside the spare the install seeded (it
    // already holds every unchanged file), except for the seeding after a first install.
    bool seeded = !first_install && !with_spare && t->seed_spare;
    if ((first_install && !t->seed_spare) || seeded) {
      if (std::string(op) == "LinkAt") continue;
    }
    EXPECT_TRUE(ops.count(op)) << op << " never called: the recording is incomplete";
  }
  int old_seen = 0, new_seen = 0;
  for (size_t i = 1; i <= calls.size(); ++i) {
    // A crash after call i is a crash before call i+1, except that it also covers the last
    // call: for kCrashAfter only the renames and unlinks (the steps that commit something) are
    // worth the time.
    if (action == FaultRule::Action::kCrashAfter && calls[i - 1].op != "RenameAt2" &&
        calls[i - 1].op != "UnlinkAt" && i != calls.size()) {
      continue;
    }
    std::string root = t->tmp / ("crash" + std::to_string(i));
    setup(root);
    FaultInjectingOs faulty;
    faulty.set_sync_noop(true);
    faulty.AddRule(FaultRule{"", i, action});
    bool crashed = false;
    try {
      auto e = t->MakeEngine(&faulty);
      (void)e->Refresh(Request(root, 2, v2), nullptr, t->cancel);
    } catch (const workers::InjectedCrash& c) {
      crashed = true;
      EXPECT_EQ(c.call_index, i);
    }
    std::string where = "crash at call " + std::to_string(i) + " " + calls[i - 1].op + "(" +
                        calls[i - 1].arg + ")";
    ASSERT_TRUE(crashed) << where << ": the run no longer reaches this call";
    bool was_new = fs::exists(root + "/pkg") && Diff(new_snap, Snap(root + "/pkg")).empty();
    (was_new ? new_seen : old_seen)++;
    t->CheckRecovered(root, first_install ? nullptr : &old_snap, new_snap, 1, 2, v2, where);
    if (::testing::Test::HasFatalFailure()) return;
    fs::remove_all(root);
  }
  // Both outcomes must occur: crashes before the swap roll back, after it roll forward.
  EXPECT_GT(old_seen, 0);
  EXPECT_GT(new_seen, 0);
}

// Staged from scratch beside the live tree (the v1 install seeded no spare).
TEST_F(CrashTest, CrashBeforeEveryOsCallOfAnIncrementalRefresh) {
  seed_spare = false;
  CrashEverywhere(this, false, FaultRule::Action::kCrashBefore);
}
// Staged from the spare the v1 install seeded.
TEST_F(CrashTest, CrashBeforeEveryOsCallOfTheRefreshAfterASeededInstall) {
  CrashEverywhere(this, false, FaultRule::Action::kCrashBefore);
}
TEST_F(CrashTest, CrashAfterEveryRenameAndUnlinkOfAnIncrementalRefresh) {
  CrashEverywhere(this, false, FaultRule::Action::kCrashAfter);
}
TEST_F(CrashTest, CrashBeforeEveryOsCallOfARefreshStagedFromTheSpareTree) {
  CrashEverywhere(this, false, FaultRule::Action::kCrashBefore, /*with_spare=*/true);
}
// Seeding the spare included (a crash during it leaves the install complete).
TEST_F(CrashTest, CrashBeforeEveryOsCallOfAFirstInstall) {
  CrashEverywhere(this, true, FaultRule::Action::kCrashBefore);
}
TEST_F(CrashTest, CrashBeforeEveryOsCallOfAFirstInstallWithoutSeeding) {
  seed_spare = false;
  CrashEverywhere(this, true, FaultRule::Action::kCrashBefore);
}
// The same with the helper threads of a refresh running (live walk beside the scan, copies
// beside the walk, re-check beside the syncfs): a crash on any thread stops them all.
TEST_F(CrashTest, CrashBeforeEveryOsCallWithHelperThreads) {
  engine_threads = 2;
  CrashEverywhere(this, false, FaultRule::Action::kCrashBefore, /*with_spare=*/true);
}

// A crash during recovery itself (after a crash right after the swap) is recovered too.
TEST_F(CrashTest, CrashDuringRecoveryIsRecovered) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakePair(v1, v2);
  auto old_snap = Snap(v1), new_snap = Snap(v2);
  auto prepare = [&](const std::string& root) {
    fs::create_directories(root);
    auto e = MakeEngine();
    ASSERT_EQ(e->Refresh(Request(root, 1, v1), nullptr, cancel).kind, OutcomeKind::kApplied);
    // Crash right after the exchange, before the manifest commit.
    struct Stop {};
    auto stopper = MakeEngine(nullptr, [](const char* point) {
      if (std::string(point) == "exchanged") throw Stop{};
    });
    EXPECT_THROW(stopper->Refresh(Request(root, 2, v2), nullptr, cancel), Stop);
  };
  std::string rec_root = tmp / "rec";
  prepare(rec_root);
  FaultInjectingOs recorder;
  recorder.set_recording(true);
  recorder.set_sync_noop(true);
  ASSERT_TRUE(MakeEngine(&recorder)->Recover(rec_root).ok());
  auto n = recorder.calls().size();
  ASSERT_GT(n, 5u);
  for (size_t i = 1; i <= n; ++i) {
    std::string root = tmp / ("rcrash" + std::to_string(i));
    prepare(root);
    FaultInjectingOs faulty;
    faulty.set_sync_noop(true);
    faulty.AddRule(FaultRule{"", i, FaultRule::Action::kCrashBefore});
    EXPECT_THROW((void)MakeEngine(&faulty)->Recover(root), workers::InjectedCrash);
    CheckRecovered(root, &old_snap, new_snap, 1, 2, v2, "recovery crash at " + std::to_string(i));
    if (HasFatalFailure()) return;
    fs::remove_all(root);
  }
}

// ---- real kill -9 ----

// Runs a refresh in a child that stops at `point` (telling the parent through a pipe), kills it
// with SIGKILL there, and checks recovery.
void KillAt(CrashTest* t, const std::string& point, bool expect_new) {
  std::string v1 = t->tmp / "v1", v2 = t->tmp / "v2", root = t->tmp / "dp";
  MakeVersion(v1, 1, TreeOptions{6, 2, true, true, 300});
  MakeVersion(v2, 2, TreeOptions{6, 2, true, true, 300});
  WriteFile(v2 + "/big.bin", Content("big", 64u << 20), 0644, 1800000000);  // many copy chunks
  SetMtime(v2, 1650000001);
  auto old_snap = Snap(v1), new_snap = Snap(v2);
  fs::create_directories(root);
  ASSERT_EQ(t->MakeEngine()->Refresh(Request(root, 1, v1), nullptr, t->cancel).kind,
            OutcomeKind::kApplied);
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(fds[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    auto e = t->MakeEngine(nullptr, [&](const char* p) {
      if (point != p) return;
      if (::write(fds[1], p, std::strlen(p)) < 0) ::_exit(2);
      for (;;) ::pause();  // wait for the SIGKILL
    });
    CancelToken cancel;
    (void)e->Refresh(Request(root, 2, v2), nullptr, cancel);
    ::_exit(3);  // never reached the point
  }
  ::close(fds[1]);
  char buf[64] = {};
  pollfd p{fds[0], POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 60000), 1) << "child did not reach " << point;
  ssize_t n = ::read(fds[0], buf, sizeof buf - 1);
  ::close(fds[0]);
  ::kill(pid, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_GT(n, 0) << "child exited with " << status << " before " << point;
  EXPECT_EQ(std::string(buf), point);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  // Before recovery the live dir is already one complete version.
  auto live = Snap(root + "/pkg");
  EXPECT_EQ(Diff(expect_new ? new_snap : old_snap, live), "");
  t->CheckRecovered(root, &old_snap, new_snap, 1, 2, v2, "killed at " + point);
  EXPECT_EQ(**t->MakeEngine()->InstalledVersion(root, "pkg"), 2u);
}

TEST_F(CrashTest, KillMidCopy) { KillAt(this, "copying", false); }
TEST_F(CrashTest, KillAfterJournal) { KillAt(this, "journaled", false); }
TEST_F(CrashTest, KillMidSwitch) { KillAt(this, "exchanged", true); }
TEST_F(CrashTest, KillBeforeRetire) { KillAt(this, "committed", true); }

}  // namespace
}  // namespace despool::enginetest
