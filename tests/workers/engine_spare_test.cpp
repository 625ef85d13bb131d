// The spare seeded after a first install (EngineConfig::seed_spare): a hard-link clone of the new
// live tree, so that the first incremental refresh after an install stages like any later one
// (unchanged files kept as they are, not linked one by one), and a seeding that fails changes
// nothing of the install's outcome. Also what the staging takes out of a reused spare (renamed
// aside, removed on a thread of its own).
#include <gtest/gtest.h>
#include <unistd.h>

#include <iterator>

#include "despool/workers/engine.h"
#include "despool/workers/os.h"
#include "workers/engine_test_util.h"

namespace despool::enginetest {
namespace {

constexpr int kFiles = 40;

class SpareSeedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root = tmp / "dp";
    fs::create_directories(root);
    v1 = tmp / "v1";
    v2 = tmp / "v2";
    MakeVersion(v1, 1, TreeOptions{kFiles, 4, true, true, 300});
    // v2: v1 with the same metadata, two files changed, one removed, one added.
    CopyTree(v1, v2);
    WriteFile(v2 + "/d1/f1.bin", "changed", 0644, 1800000000);
    WriteFile(v2 + "/f4.bin", "changed too", 0600, 1800000000);
    fs::remove(v2 + "/d2/f2.bin");
    WriteFile(v2 + "/d3/added.txt", "added", 0644, 1800000001);
    for (const char* d : {"/d1", "/d2", "/d3"}) SetMtime(v2 + d, 1650000000);
    SetMtime(v2, 1650000001);
  }

  std::unique_ptr<Engine> MakeEngine(workers::Os* os = nullptr, bool seed = true,
                                     std::function<void(const char*)> checkpoint = {},
                                     int threads = 2) {
    EngineConfig c;
    c.threads = threads;
    c.os = os;
    c.probe = std::make_shared<FakeProbe>();
    c.seed_spare = seed;
    c.checkpoint = std::move(checkpoint);
    return std::make_unique<Engine>(c);
  }
  RefreshOutcome Run(Engine& e, std::uint64_t v, const std::string& src) {
    return e.Refresh(Request(root, v, src), nullptr, cancel);
  }
  std::string Live() const { return root + "/pkg"; }
  std::string Spare() const { return root + "/.despool/staging/pkg@spare"; }
  std::string Seeding() const { return root + "/.despool/staging/pkg@seeding"; }

  static size_t Count(const std::vector<workers::OsCall>& calls, const std::string& op) {
    size_t n = 0;
    for (const auto& c : calls) n += c.op == op;
    return n;
  }

  TempDir tmp;
  std::string root, v1, v2;
  CancelToken cancel;
};

TEST_F(SpareSeedTest, FirstInstallSeedsTheSpareWithTheLiveFiles) {
  auto e = MakeEngine();
  auto out = Run(*e, 1, v1);
  ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
  EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
  EXPECT_EQ(out.stats.files_copied, static_cast<std::uint64_t>(kFiles));
  EXPECT_EQ(Strays(root, "pkg"), "");
  EXPECT_FALSE(fs::exists(Seeding()));
  ASSERT_TRUE(fs::is_directory(Spare()));

  // Every entry of the spare is a directory or a hard link of the live file of the same path;
  // every live regular file and directory has its counterpart.
  std::map<std::string, struct stat> live, spare;
  auto walk = [](const std::string& dir, std::map<std::string, struct stat>* out) {
    for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
         ++it) {
      struct stat st;
      ASSERT_EQ(::lstat(it->path().c_str(), &st), 0) << it->path();
      (*out)[it->path().lexically_relative(dir).string()] = st;
    }
  };
  walk(Live(), &live);
  walk(Spare(), &spare);
  size_t files = 0, dirs = 0;
  for (const auto& [path, st] : spare) {
    auto it = live.find(path);
    ASSERT_NE(it, live.end()) << "spare has " << path << ", live does not";
    if (S_ISREG(st.st_mode)) {
      ++files;
      EXPECT_TRUE(S_ISREG(it->second.st_mode)) << path;
      EXPECT_EQ(st.st_ino, it->second.st_ino) << path << " is not the live file";
      EXPECT_EQ(st.st_dev, it->second.st_dev) << path;
    } else {
      ASSERT_TRUE(S_ISDIR(st.st_mode)) << path << ": only dirs and files are seeded";
      EXPECT_TRUE(S_ISDIR(it->second.st_mode)) << path;
      ++dirs;
    }
  }
  size_t live_files = 0, live_dirs = 0;
  for (const auto& [path, st] : live) {
    live_files += S_ISREG(st.st_mode);
    live_dirs += S_ISDIR(st.st_mode);
  }
  EXPECT_EQ(files, static_cast<size_t>(kFiles));
  EXPECT_EQ(files, live_files);
  EXPECT_EQ(dirs, live_dirs);  // the empty one included

  // Without seeding a first install leaves no spare.
  root = tmp / "dp-noseed";
  fs::create_directories(root);
  ASSERT_EQ(Run(*MakeEngine(nullptr, false), 1, v1).kind, OutcomeKind::kApplied);
  EXPECT_FALSE(fs::exists(Spare()));
  EXPECT_EQ(Strays(root, "pkg"), "");
}

// The first incremental refresh after an install keeps the unchanged files of the seeded spare
// (the live inodes) and links none; without seeding it links every one of them.
TEST_F(SpareSeedTest, NextRefreshMakesNoLinkForUnchangedFiles) {
  constexpr std::uint64_t kUnchanged = kFiles - 3;  // two changed, one removed
  for (bool seed : {true, false}) {
    SCOPED_TRACE(seed ? "seeded" : "not seeded");
    root = tmp / (seed ? "dp-seed" : "dp-noseed");
    fs::create_directories(root);
    ASSERT_EQ(Run(*MakeEngine(nullptr, seed), 1, v1).kind, OutcomeKind::kApplied);
    auto before = Snap(Live());
    FaultInjectingOs recorder;
    recorder.set_recording(true);
    auto out = Run(*MakeEngine(&recorder, seed), 2, v2);
    ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
    auto after = Snap(Live());
    EXPECT_EQ(Diff(Snap(v2), after), "");
    EXPECT_EQ(out.stats.files_linked, kUnchanged);
    EXPECT_EQ(out.stats.files_copied, 3u);
    EXPECT_EQ(out.stats.files_removed, 1u);
    EXPECT_EQ(Count(recorder.calls(), "LinkAt"), seed ? 0u : kUnchanged);
    EXPECT_EQ(after["f0.bin"].ino, before["f0.bin"].ino) << "an unchanged file was not kept";
    EXPECT_EQ(after["d3/f3.bin"].ino, before["d3/f3.bin"].ino);
    EXPECT_NE(after["d1/f1.bin"].ino, before["d1/f1.bin"].ino);
    EXPECT_EQ(Strays(root, "pkg"), "");
    auto report = MakeEngine()->Verify(root, "pkg");
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->clean());
  }
}

// Seeding is an optimisation: whichever of its calls fails, the install is applied and exact,
// the half-built clone is gone (or, when removing it failed too, gone after the next refresh),
// and the next refresh applies exactly (linking every file).
TEST_F(SpareSeedTest, FailedSeedingLeavesTheInstallAppliedAndNoTempTree) {
  struct Case {
    const char* op;
    std::uint64_t nth;  // counted from the "committed" checkpoint: the seed's calls
    int err;
    const char* cleanup_op = nullptr;  // also fail the removal of the partial clone
  };
  const Case cases[] = {
      {"LinkAt", 1, EMLINK},   {"LinkAt", 7, ENOSPC},
      {"LinkAt", kFiles, EIO}, {"MkdirAt", 1, ENOSPC},
      {"MkdirAt", 3, ENOSPC},  {"OpenAt", 2, EMFILE},
      {"OpenAt", 4, EIO},      {"FstatAt", 1, EIO},
      {"RenameAt2", 1, EIO},   {"LinkAt", 5, ENOSPC, "UnlinkAt"},
  };
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.op) + " #" + std::to_string(c.nth) + " errno " +
                 std::to_string(c.err) + (c.cleanup_op ? " and the cleanup" : ""));
    root = tmp / ("dp" + std::to_string(++n));
    fs::create_directories(root);
    FaultInjectingOs faulty;
    faulty.set_recording(true);
    size_t committed_at = 0;
    auto e = MakeEngine(&faulty, true, [&](const char* point) {
      if (std::string(point) != "committed") return;
      committed_at = faulty.calls().size();
      faulty.AddRule(FaultRule{c.op, c.nth, FaultRule::Action::kFail, c.err});
      // UnlinkAt #1 after the commit removes the journal; #2 is the clone's removal.
      if (c.cleanup_op) faulty.AddRule(FaultRule{c.cleanup_op, 2, FaultRule::Action::kFail, EIO});
    });
    auto out = Run(*e, 1, v1);
    EXPECT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
    ASSERT_TRUE(out.installed_version.has_value());
    EXPECT_EQ(*out.installed_version, 1u);
    EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
    EXPECT_FALSE(fs::exists(Spare())) << "the seeding did not fail";
    EXPECT_EQ(fs::exists(Seeding()), c.cleanup_op != nullptr);
    if (!c.cleanup_op) {
      EXPECT_EQ(Strays(root, "pkg"), "");
    }
    // The failed call was the seed's (made after the commit).
    auto calls = faulty.calls();
    ASSERT_GT(committed_at, 0u);
    EXPECT_GE(Count({calls.begin() + static_cast<std::ptrdiff_t>(committed_at), calls.end()}, c.op),
              c.nth);
    auto installed = MakeEngine()->InstalledVersion(root, "pkg");
    ASSERT_TRUE(installed.ok() && installed->has_value());
    EXPECT_EQ(**installed, 1u);
    auto next = Run(*MakeEngine(), 2, v2);
    EXPECT_EQ(next.kind, OutcomeKind::kApplied) << next.message;
    EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
    EXPECT_EQ(Strays(root, "pkg"), "");
  }
}

// A spare that appears while the clone is built (another tree kept meanwhile) is kept; the clone
// is dropped, and the next refresh reshapes that spare exactly.
TEST_F(SpareSeedTest, ExistingSpareIsKeptAndTheCloneDropped) {
  FaultInjectingOs os;
  bool planted = false;
  os.set_observer([&](const workers::OsCall& call) {
    if (planted || call.op != "LinkAt") return;
    planted = true;
    WriteFile(Spare() + "/junk/marker", "planted");
  });
  auto out = Run(*MakeEngine(&os), 1, v1);
  ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
  ASSERT_TRUE(planted);
  EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
  EXPECT_FALSE(fs::exists(Seeding()));
  EXPECT_TRUE(fs::exists(Spare() + "/junk/marker"));
  EXPECT_FALSE(fs::exists(Spare() + "/f0.bin")) << "the clone replaced the spare";
  EXPECT_EQ(Strays(root, "pkg"), "");
  auto next = Run(*MakeEngine(), 2, v2);
  ASSERT_EQ(next.kind, OutcomeKind::kApplied) << next.message;
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
}

// A leftover of an interrupted seeding is removed by recovery (the crash tests cover a crash
// at each of its calls; this is the state they leave, reached directly).
TEST_F(SpareSeedTest, RecoveryRemovesAnInterruptedSeeding) {
  ASSERT_EQ(Run(*MakeEngine(nullptr, false), 1, v1).kind, OutcomeKind::kApplied);
  WriteFile(Seeding() + "/d1/f1.bin", "half a clone");
  ASSERT_TRUE(MakeEngine()->Recover(root).ok());
  EXPECT_FALSE(fs::exists(Seeding()));
  EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
}

// v3: v2 with d3/f3.bin changed. Installed v1, then v2: the spare is the retired v1 tree, whose
// d1/f1.bin and f4.bin are stale (v2 changed them: the live files are other inodes), whose
// d2/f2.bin v2 removed, whose d3/f3.bin is the live file that v3 replaces, and whose symlink
// d1/link-to-f0 differs from v3's in mtime (copying a tree gives its symlinks new mtimes).
class StaleSpareTest : public SpareSeedTest {
 protected:
  void SetUp() override {
    SpareSeedTest::SetUp();
    v3 = tmp / "v3";
    CopyTree(v2, v3);
    WriteFile(v3 + "/d3/f3.bin", "changed in v3", 0644, 1800000002);
    SetMtime(v3 + "/d3", 1650000000);
    ASSERT_EQ(Run(*MakeEngine(), 1, v1).kind, OutcomeKind::kApplied);
    ASSERT_EQ(Run(*MakeEngine(), 2, v2).kind, OutcomeKind::kApplied);
    ASSERT_TRUE(fs::exists(Spare() + "/d2/f2.bin"));
  }
  // Renames of the five spare entries the v3 staging takes out, by name.
  static size_t TakenOut(const std::vector<workers::OsCall>& calls) {
    size_t n = 0;
    for (const auto& c : calls) {
      n += c.op == "RenameAt2" &&
           (c.arg == "f1.bin" || c.arg == "f4.bin" || c.arg == "f2.bin" || c.arg == "f3.bin" ||
            c.arg == "link-to-f0");
    }
    return n;
  }
  std::string Discarded() const {
    return root + "/.despool/trash/pkg@discards." + std::to_string(::getpid());
  }
  std::string v3;
};

// With helper threads, what the staging takes out of the spare is renamed aside and removed on
// a thread of its own (a freed file's blocks wait for the device's discard); the result is the
// same as removing in place, which a single-threaded engine does.
TEST_F(StaleSpareTest, StaleEntriesAreRenamedAsideAndRemovedBesideTheStaging) {
  for (int threads : {2, 1}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    if (threads == 1) {  // start over: install v1, v2 again
      root = tmp / "dp1";
      fs::create_directories(root);
      ASSERT_EQ(Run(*MakeEngine(), 1, v1).kind, OutcomeKind::kApplied);
      ASSERT_EQ(Run(*MakeEngine(), 2, v2).kind, OutcomeKind::kApplied);
    }
    FaultInjectingOs recorder;
    recorder.set_recording(true);
    auto out = Run(*MakeEngine(&recorder, true, {}, threads), 3, v3);
    ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
    EXPECT_EQ(Diff(Snap(v3), Snap(Live())), "");
    EXPECT_EQ(Strays(root, "pkg"), "");
    EXPECT_FALSE(fs::exists(Discarded()));
    auto calls = recorder.calls();
    EXPECT_EQ(TakenOut(calls), threads > 1 ? 5u : 0u);
    // Each renamed entry was then removed from the scratch dir ("0", "1", ... in it).
    size_t removed = 0;
    for (const auto& c : calls) {
      removed += c.op == "UnlinkAt" && c.arg.find_first_not_of("0123456789") == std::string::npos;
    }
    EXPECT_EQ(removed, threads > 1 ? 5u : 0u);
    auto report = MakeEngine()->Verify(root, "pkg");
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->clean());
  }
}

// A removal that fails changes nothing of the outcome: the entries stay in the scratch dir in
// the trash, which the package's next refresh removes.
TEST_F(StaleSpareTest, AFailedRemovalLeavesTrashThatTheNextRefreshRemoves) {
  FaultInjectingOs faulty;
  auto e = MakeEngine(&faulty, true, [&](const char* point) {
    // Every unlink made while staging is a removal of a taken-out entry.
    if (std::string(point) == "staging") {
      faulty.AddRule(FaultRule{"UnlinkAt", 1, FaultRule::Action::kFail, EIO, true});
    }
    if (std::string(point) == "staged") faulty.ClearRules();
  });
  auto out = Run(*e, 3, v3);
  ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
  EXPECT_EQ(Diff(Snap(v3), Snap(Live())), "");
  ASSERT_TRUE(fs::exists(Discarded()));
  EXPECT_EQ(std::distance(fs::directory_iterator(Discarded()), fs::directory_iterator()), 5);
  EXPECT_NE(Strays(root, "pkg"), "");
  // The next refresh recovers the package before it stages (an up-to-date one writes nothing).
  auto next = Run(*MakeEngine(), 4, v3);
  EXPECT_EQ(next.kind, OutcomeKind::kApplied) << next.message;
  EXPECT_FALSE(fs::exists(Discarded()));
  EXPECT_EQ(Strays(root, "pkg"), "");
  EXPECT_EQ(Diff(Snap(v3), Snap(Live())), "");
}

// A staging that fails after it took entries out of the spare (ENOSPC copying d3/f3.bin, after
// d1/f1.bin and d2/f2.bin went) still finishes the removals: the live tree is as it was and no
// scratch dir is left behind.
TEST_F(StaleSpareTest, AFailedStagingLeavesNoScratchDir) {
  auto before = Snap(Live());
  FaultInjectingOs faulty;
  faulty.AddRule(FaultRule{"CopyFileRange", 1, FaultRule::Action::kFail, ENOSPC});
  faulty.set_recording(true);
  auto out = Run(*MakeEngine(&faulty), 3, v3);
  ASSERT_EQ(out.kind, OutcomeKind::kRetryableError) << out.message;
  EXPECT_GE(TakenOut(faulty.calls()), 1u) << "nothing was taken out before the failure";
  EXPECT_EQ(Diff(before, Snap(Live())), "");
  EXPECT_FALSE(fs::exists(Discarded()));
  EXPECT_EQ(Strays(root, "pkg"), "");
  auto retry = Run(*MakeEngine(), 3, v3);
  EXPECT_EQ(retry.kind, OutcomeKind::kApplied) << retry.message;
  EXPECT_EQ(Diff(Snap(v3), Snap(Live())), "");
}

}  // namespace
}  // namespace despool::enginetest
