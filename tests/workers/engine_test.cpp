// Refresh engine: staging, switching, idempotence, deferral, verify/repair, faults, hostile input.
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "despool/workers/engine.h"
#include "despool/workers/os.h"
#include "engine/fsutil.h"
#include "engine/scan.h"
#include "workers/engine_test_util.h"

namespace despool::enginetest {
namespace {

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root = tmp / "dp";
    fs::create_directories(root);
    probe = std::make_shared<FakeProbe>();
  }
  std::unique_ptr<Engine> MakeEngine(workers::Os* os = nullptr, bool seed_spare = true) {
    EngineConfig c;
    c.os = os;
    c.probe = probe;
    c.seed_spare = seed_spare;
    return std::make_unique<Engine>(c);
  }
  RefreshOutcome Run(Engine& e, std::uint64_t v, const std::string& src,
                     workers::RefreshOptions opt = {}) {
    auto req = Request(root, v, src);
    req.options = opt;
    return e.Refresh(req, nullptr, cancel);
  }
  std::string Live() const { return root + "/pkg"; }

  TempDir tmp;
  std::string root;
  std::shared_ptr<FakeProbe> probe;
  CancelToken cancel;
};

#define EXPECT_KIND(outcome, k) \
  EXPECT_EQ(workers::OutcomeKindName((outcome).kind), std::string(workers::OutcomeKindName(k))) \
      << (outcome).message

TEST_F(EngineTest, FirstInstallIsAnExactCopy) {
  std::string src = tmp / "v1";
  MakeVersion(src, 1);
  auto e = MakeEngine();
  ASSERT_TRUE(e->CheckDpRoot(root).ok());
  auto out = Run(*e, 1, src);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(src), Snap(Live())), "");
  EXPECT_EQ(out.stats.files_total, 12u);
  EXPECT_EQ(out.stats.files_copied, 12u);
  EXPECT_EQ(out.stats.files_linked, 0u);
  auto v = e->InstalledVersion(root, "pkg");
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(v->has_value());
  EXPECT_EQ(**v, 1u);
  auto m = e->InstalledManifest(root, "pkg");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->source, src);
  EXPECT_EQ(m->file_count(), 12u);
  EXPECT_EQ(Strays(root, "pkg"), "");
  auto report = e->Verify(root, "pkg");
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->clean());
  EXPECT_TRUE(probe->asked.empty());  // nothing live to check on a first install
}

TEST_F(EngineTest, IncrementalRefreshLinksUnchangedFiles) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  // Keep metadata of the copy identical to v1, then change three things.
  CopyTree(v1, v2);
  WriteFile(v2 + "/d1/f1.bin", "changed content", 0644, 1800000000);
  fs::remove(v2 + "/d2/f2.bin");
  WriteFile(v2 + "/new/added.txt", "added", 0600, 1800000001);
  SetMtime(v2 + "/d1", 1650000000);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  auto before = Snap(Live());
  auto out = Run(*e, 2, v2);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  EXPECT_EQ(out.stats.files_copied, 2u);
  EXPECT_EQ(out.stats.files_linked, 10u);
  EXPECT_EQ(out.stats.files_removed, 1u);
  auto after = Snap(Live());
  EXPECT_EQ(after["f0.bin"].ino, before["f0.bin"].ino) << "unchanged file must be hard-linked";
  EXPECT_NE(after["d1/f1.bin"].ino, before["d1/f1.bin"].ino);
  // The probe was asked exactly about the files replaced or removed.
  ASSERT_EQ(probe->asked.size(), 1u);
  EXPECT_EQ(probe->asked[0], (std::vector<std::string>{"d1/f1.bin", "d2/f2.bin"}));
  EXPECT_EQ(Strays(root, "pkg"), "");
}

// Staging starts from the tree the previous switch retired; whatever it holds, the result must be
// exactly the source, with unchanged files still sharing the live inode.
TEST_F(EngineTest, SpareTreeIsReshapedExactly) {
  auto e = MakeEngine();
  std::vector<std::string> srcs;
  for (int v = 1; v <= 5; ++v) srcs.push_back(tmp / ("v" + std::to_string(v)));
  MakeVersion(srcs[0], 1);
  for (int v = 2; v <= 5; ++v) {
    const std::string& prev = srcs[static_cast<size_t>(v - 2)];
    const std::string& cur = srcs[static_cast<size_t>(v - 1)];
    CopyTree(prev, cur);
  }
  // v2: a file becomes a dir, a dir becomes a symlink, a mode changes.
  fs::remove(srcs[1] + "/f3.bin");
  WriteFile(srcs[1] + "/f3.bin/inner", "now a dir", 0600, 1800000000);
  fs::remove_all(srcs[1] + "/empty");
  fs::create_symlink("d2", srcs[1] + "/empty");
  ::chmod((srcs[1] + "/d2/f5.bin").c_str(), 0600);
  SetMtime(srcs[1] + "/d2/f5.bin", 1700000001);
  // v3: back again, plus a new read-only dir.
  fs::remove_all(srcs[2] + "/f3.bin");
  WriteFile(srcs[2] + "/f3.bin", "a file again", 0644, 1800000002);
  fs::remove(srcs[2] + "/empty");
  fs::create_directories(srcs[2] + "/empty");
  WriteFile(srcs[2] + "/ro/x", "x", 0444, 1800000003);
  ::chmod((srcs[2] + "/ro").c_str(), 0555);
  // v4: a symlink retargeted; v5: a file removed.
  fs::remove(srcs[3] + "/d1/link-to-f0");
  fs::create_symlink("f1.bin", srcs[3] + "/d1/link-to-f0");
  fs::remove(srcs[4] + "/d1/f4.bin");
  for (const auto& src : srcs) {
    for (auto& [rel, node] : Snap(src)) {
      if (node.type == 'd') SetMtime(src + "/" + rel, 1650000000 + static_cast<int>(rel.size()));
    }
  }
  for (size_t i = 0; i < srcs.size(); ++i) {
    SCOPED_TRACE("version " + std::to_string(i + 1));
    auto before = fs::exists(Live()) ? Snap(Live()) : Snapshot{};
    auto out = Run(*e, i + 1, srcs[i]);
    ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
    auto after = Snap(Live());
    EXPECT_EQ(Diff(Snap(srcs[i]), after), "");
    EXPECT_EQ(Strays(root, "pkg"), "");
    if (i >= 1) {
      EXPECT_TRUE(fs::exists(root + "/.despool/staging/pkg@spare"));
      EXPECT_EQ(after["d2/f8.bin"].ino, before["d2/f8.bin"].ino) << "unchanged file not linked";
    }
    auto report = e->Verify(root, "pkg");
    ASSERT_TRUE(report.ok());
    EXPECT_TRUE(report->clean());
  }
}

TEST_F(EngineTest, UpToDateAndLowerVersionsTouchNothing) {
  std::string v5 = tmp / "v5", v3 = tmp / "v3";
  MakeVersion(v5, 5);
  MakeVersion(v3, 3);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 5, v5).kind, OutcomeKind::kApplied);
  auto before = Snap(root);
  FaultInjectingOs recorder;
  recorder.set_recording(true);
  auto e2 = MakeEngine(&recorder);
  for (std::uint64_t v : {5u, 3u, 1u}) {
    auto out = Run(*e2, v, v == 5 ? v5 : v3);
    EXPECT_KIND(out, OutcomeKind::kUpToDate);
    ASSERT_TRUE(out.installed_version.has_value());
    EXPECT_EQ(*out.installed_version, 5u);
  }
  for (const auto& c : recorder.calls()) {
    static const std::set<std::string> read_only = {"OpenAt", "Close", "Read", "Fstat", "FstatAt"};
    EXPECT_TRUE(read_only.count(c.op)) << "up-to-date refresh made a " << c.op << " call on "
                                       << c.arg;
  }
  auto after = Snap(root);
  EXPECT_EQ(Diff(before, after), "");
  for (const auto& [k, n] : before) EXPECT_EQ(after[k].ino, n.ino) << k;
}

// A journal that does not parse is reported as corruption: recovery never guesses which way a
// switch went from a damaged record, and live stays as it is.
TEST_F(EngineTest, MalformedJournalIsCorruption) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1);
  ASSERT_EQ(Run(*MakeEngine(), 1, v1).kind, OutcomeKind::kApplied);
  auto before = Snap(Live());
  const std::string good = "despool-journal 1\npackage pkg\nto_version 2\nstaged pkg@2\ndev 1\nino 2\nend\n";
  const std::string bad[] = {
      "despool-journal 1\npackage pkg\nto_version 2\nstaged pkg@2\ndev 1\nino 2x\nend\n",
      "despool-journal 1\npackage pkg\nto_version\nstaged pkg@2\ndev 1\nino 2\nend\n",
      "despool-journal 1\npackage \nto_version 2\nstaged pkg@2\ndev 1\nino 2\nend\n",
      "despool-journal 1\npackage pkg\nto_version 2\nstage pkg@2\ndev 1\nino 2\nend\n",
      good.substr(0, good.size() - 4),  // cut short by a crash: no "end"
  };
  for (const auto& text : bad) {
    SCOPED_TRACE(text);
    WriteFile(root + "/.despool/journal/pkg.journal", text);
    auto st = MakeEngine()->Recover(root);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code, ErrorCode::kCorruption) << st.error().message;
    EXPECT_EQ(Diff(before, Snap(Live())), "");
  }
  // Well formed (a swap that never happened: live is not the staged inode): rolled back.
  WriteFile(root + "/.despool/journal/pkg.journal", good);
  EXPECT_TRUE(MakeEngine()->Recover(root).ok());
  EXPECT_FALSE(fs::exists(root + "/.despool/journal/pkg.journal"));
  EXPECT_EQ(Diff(before, Snap(Live())), "");
}

TEST_F(EngineTest, LiveFileChangedInPlaceIsCopiedAfresh) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  CopyTree(v1, v2);
  // Someone scribbles on the DP (size and mtime change).
  WriteFile(Live() + "/f0.bin", "scribbled", 0755, 1700000001);
  auto out = Run(*e, 2, v2);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  EXPECT_EQ(out.stats.files_copied, 1u);
}

TEST_F(EngineTest, ChecksumOptionComparesContent) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  CopyTree(v1, v2);
  // Same size, same mtime, different content: only a checksum run sees it.
  std::string old = ReadFile(v1 + "/f0.bin");
  std::string changed = old;
  changed[0] = static_cast<char>(changed[0] ^ 0x55);
  WriteFile(v2 + "/f0.bin", changed, 0755, 1700000001);
  SetMtime(v2, 1650000001);
  workers::RefreshOptions opt;
  opt.checksum = true;
  auto out = Run(*e, 2, v2, opt);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(out.stats.files_copied, 1u);
  EXPECT_EQ(ReadFile(Live() + "/f0.bin"), changed);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
}

TEST_F(EngineTest, InUseDefersThenRetryReusesStaging) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  MakeVersion(v2, 2);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  auto live_before = Snap(Live());
  probe->report.in_use = {"d1/f1.bin"};
  probe->report.holders = {{4242, "reader", "d1/f1.bin"}};
  auto out = Run(*e, 2, v2);
  EXPECT_KIND(out, OutcomeKind::kDeferred);
  ASSERT_EQ(out.in_use.in_use.size(), 1u);
  EXPECT_EQ(out.in_use.in_use[0], "d1/f1.bin");
  EXPECT_EQ(out.in_use.holders.at(0).pid, 4242);
  EXPECT_GT(out.suggested_delay.count(), 0);
  EXPECT_EQ(Diff(live_before, Snap(Live())), "");
  EXPECT_EQ(**e->InstalledVersion(root, "pkg"), 1u);
  EXPECT_NE(Strays(root, "pkg", /*allow_staged=*/true), "x") ;
  EXPECT_TRUE(fs::exists(root + "/.despool/staging/pkg@2.manifest"));
  probe->report = {};
  auto retry = Run(*e, 2, v2);
  EXPECT_KIND(retry, OutcomeKind::kApplied);
  EXPECT_TRUE(retry.stats.reused_staging);
  EXPECT_EQ(retry.stats.files_copied, 0u);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
}

TEST_F(EngineTest, StagedTreeIsNotReusedWhenTheSourceChanged) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  MakeVersion(v2, 2);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  probe->report.in_use = {"f0.bin"};
  ASSERT_EQ(Run(*e, 2, v2).kind, OutcomeKind::kDeferred);
  WriteFile(v2 + "/f3.bin", "republished", 0644, 1900000000);
  probe->report = {};
  auto retry = Run(*e, 2, v2);
  EXPECT_KIND(retry, OutcomeKind::kApplied);
  EXPECT_FALSE(retry.stats.reused_staging);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
}

TEST_F(EngineTest, IncompleteProbeNeverMeansNotInUse) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  MakeVersion(v2, 2);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  auto live_before = Snap(Live());
  probe->report.complete = false;
  probe->report.incomplete_reason = "cannot read /proc/1/fd";
  auto out = Run(*e, 2, v2);
  EXPECT_KIND(out, OutcomeKind::kDeferred);
  EXPECT_NE(out.message.find("/proc/1/fd"), std::string::npos);
  probe->report = {};
  probe->fail = true;
  auto out2 = Run(*e, 2, v2);
  EXPECT_KIND(out2, OutcomeKind::kRetryableError);
  EXPECT_EQ(Diff(live_before, Snap(Live())), "");
  // force skips the veto.
  workers::RefreshOptions force;
  force.force = true;
  auto forced = Run(*e, 2, v2, force);
  EXPECT_KIND(forced, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
}

TEST_F(EngineTest, AnyOpenBlocksAsksAboutEveryFile) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  CopyTree(v1, v2);
  workers::RefreshOptions opt;
  opt.any_open_blocks = true;
  auto out = Run(*e, 2, v2, opt);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  ASSERT_EQ(probe->asked.size(), 1u);
  EXPECT_EQ(probe->asked[0].size(), 12u);
  EXPECT_EQ(out.stats.files_linked, 12u);
}

TEST_F(EngineTest, CancelBeforeSwitchLeavesLiveAndNoStaging) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1);
  MakeVersion(v2, 2);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  auto live_before = Snap(Live());
  CancelToken token;
  auto req = Request(root, 2, v2);
  int calls = 0;
  auto out = e->Refresh(req, [&](const workers::Progress& p) {
    if (p.phase == workers::Phase::kStage && ++calls == 1) token.Cancel();
  }, token);
  EXPECT_KIND(out, OutcomeKind::kCancelled);
  EXPECT_EQ(Diff(live_before, Snap(Live())), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
}

TEST_F(EngineTest, ProgressIsMonotonicAndComplete) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1, TreeOptions{40, 4, true, true, 200000});
  auto e = MakeEngine();
  std::vector<workers::Progress> seen;
  auto out = e->Refresh(Request(root, 1, v1), [&](const workers::Progress& p) { seen.push_back(p); },
                        cancel);
  ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
  ASSERT_FALSE(seen.empty());
  for (size_t i = 1; i < seen.size(); ++i) {
    EXPECT_GE(seen[i].bytes_done, seen[i - 1].bytes_done);
    EXPECT_GE(seen[i].files_done, seen[i - 1].files_done);
    EXPECT_GE(static_cast<int>(seen[i].phase), static_cast<int>(seen[i - 1].phase));
  }
  EXPECT_EQ(seen.back().phase, workers::Phase::kDone);
  EXPECT_EQ(seen.back().files_done, 40u);
  EXPECT_EQ(seen.back().bytes_done, out.stats.bytes_copied);
  EXPECT_GE(seen.back().bytes_total, out.stats.bytes_copied);
}

// A rate limiter that records what it is asked for and makes each caller wait `wait`.
struct RecordingLimiter : workers::RateLimiter {
  explicit RecordingLimiter(std::chrono::nanoseconds w = {}) : wait(w) {}
  std::chrono::nanoseconds Reserve(std::uint64_t bytes) override {
    total += bytes;
    ++calls;
    return wait;
  }
  const std::chrono::nanoseconds wait;
  std::atomic<std::uint64_t> total{0}, calls{0};
};

TEST_F(EngineTest, RateLimiterThrottlesCopies) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1, TreeOptions{4, 1, false, false, 1 << 20});  // ~4 MiB
  auto limiter = std::make_shared<RecordingLimiter>();
  auto e = MakeEngine();
  workers::RefreshOptions opt;
  opt.rate_limiter = limiter;
  auto out = Run(*e, 1, v1, opt);
  ASSERT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
  EXPECT_EQ(limiter->total.load(), out.stats.bytes_copied);
  EXPECT_GE(limiter->calls.load(), 4u);
  // A real bucket: 4 MiB at 8 MiB/s with a 1 MiB burst takes >= ~0.35 s.
  auto bucket = workers::MakeTokenBucket(8u << 20);
  EXPECT_EQ(bucket->Reserve(1u << 20).count(), 0);
  EXPECT_GT(bucket->Reserve(4u << 20).count(), 400000000);
}

// A rate-limited copy goes in small chunks, each waiting for its share of the rate, and the
// staging reports its bytes as they go, whichever thread copies (the refreshing one reports
// per chunk; a helper's bytes are reported from the refreshing thread while it waits). Before,
// an 8 MiB chunk waited for all of its share at once: nothing to show (nor to cancel between)
// for 4 s at 2 MiB/s.
TEST_F(EngineTest, AThrottledCopyReportsProgressAsItGoes) {
  const std::string v1 = tmp / "v1";
  WriteFile(v1 + "/big.bin", Content("big", 2u << 20));
  for (int threads : {1, 2}) {
    SCOPED_TRACE(threads);
    const std::string r = tmp / ("dp" + std::to_string(threads));
    fs::create_directories(r);
    EngineConfig c;
    c.probe = probe;
    c.threads = threads;
    Engine e(c);
    // The simulated rate: 256 KiB per 40 ms.
    auto limiter = std::make_shared<RecordingLimiter>(std::chrono::milliseconds(40));
    auto req = Request(r, 1, v1);
    req.options.rate_limiter = limiter;
    std::vector<workers::Progress> seen;
    auto out = e.Refresh(req, [&](const workers::Progress& p) { seen.push_back(p); }, cancel);
    EXPECT_KIND(out, OutcomeKind::kApplied);
    EXPECT_EQ(limiter->total.load(), 2u << 20);
    EXPECT_EQ(limiter->calls.load(), 8u);  // 256 KiB chunks
    std::size_t partial = 0;
    for (const auto& p : seen) {
      partial += p.phase == workers::Phase::kStage && p.bytes_done > 0 && p.bytes_done < p.bytes_total;
    }
    EXPECT_GE(partial, 1u) << "no progress reported while the file was copied";
    for (size_t i = 1; i < seen.size(); ++i) EXPECT_GE(seen[i].bytes_done, seen[i - 1].bytes_done);
    ASSERT_FALSE(seen.empty());
    EXPECT_EQ(seen.back().bytes_done, 2u << 20);
  }
}

TEST_F(EngineTest, LockedPackageIsRetryable) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1);
  auto e = MakeEngine();
  ASSERT_TRUE(e->CheckDpRoot(root).ok());
  int fd = ::open((root + "/.despool/locks/pkg.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);
  auto out = Run(*e, 1, v1);
  EXPECT_KIND(out, OutcomeKind::kRetryableError);
  EXPECT_NE(out.message.find("locked"), std::string::npos);
  EXPECT_FALSE(fs::exists(Live()));
  ::close(fd);
  EXPECT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
}

// ---- Faults ----

struct FaultCase {
  const char* op;
  std::uint64_t nth;
  int err;
};

TEST_F(EngineTest, EnospcAndEioLeaveLiveUntouchedAndStagingGone) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1, TreeOptions{12, 3, true, true, 64u << 10});
  // v2: half the files unchanged (linked), half changed (copied).
  CopyTree(v1, v2);
  for (int i = 0; i < 12; i += 2) {
    std::string rel = (i % 3 == 0 ? std::string() : "d" + std::to_string(i % 3) + "/") + "f" +
                      std::to_string(i) + ".bin";
    WriteFile(v2 + "/" + rel, Content(rel + "v2", (64u << 10) + 5), 0644, 1800000000);
  }
  const FaultCase cases[] = {{"CopyFileRange", 3, ENOSPC}, {"CopyFileRange", 1, EIO},
                             {"Syncfs", 1, EIO},           {"Pread", 2, EIO},
                             {"MkdirAt", 2, ENOSPC},       {"LinkAt", 2, EIO},
                             {"Write", 1, ENOSPC},         {"Fsync", 1, EIO},
                             {"SymlinkAt", 1, EIO},        {"Futimens", 3, EIO}};
  int n = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(std::string(c.op) + " errno " + std::to_string(c.err));
    root = tmp / ("dp" + std::to_string(++n));
    fs::create_directories(root);
    // No spare seeded by the install: v2 is staged from scratch beside the live tree, so every
    // kind of call above (the links of unchanged files, the mkdirs) is made.
    auto e = MakeEngine(nullptr, /*seed_spare=*/false);
    ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
    auto live_before = Snap(Live());
    FaultInjectingOs faulty;
    faulty.AddRule(FaultRule{c.op, c.nth, FaultRule::Action::kFail, c.err});
    auto fe = MakeEngine(&faulty);
    auto out = Run(*fe, 2, v2);
    EXPECT_KIND(out, OutcomeKind::kRetryableError);
    EXPECT_EQ(out.error.sys_errno, c.err) << out.message;
    EXPECT_EQ(Diff(live_before, Snap(Live())), "");
    EXPECT_EQ(Strays(root, "pkg"), "");
    EXPECT_EQ(**e->InstalledVersion(root, "pkg"), 1u);
    // The next attempt, without the fault, applies.
    auto retry = Run(*e, 2, v2);
    EXPECT_KIND(retry, OutcomeKind::kApplied);
    EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  }
  // EXDEV from copy_file_range falls back to read/write and still applies.
  root = tmp / "dp-exdev";
  fs::create_directories(root);
  FaultInjectingOs exdev;
  exdev.AddRule(FaultRule{"CopyFileRange", 1, FaultRule::Action::kFail, EXDEV, true});
  auto xe = MakeEngine(&exdev);
  ASSERT_EQ(Run(*xe, 1, v1).kind, OutcomeKind::kApplied);
  auto out = Run(*xe, 2, v2);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
  // Starting a staged file's writeback early is only a head start (the syncfs before the
  // switch writes and checks everything): its failure is not the refresh's.
  root = tmp / "dp-sfr";
  fs::create_directories(root);
  FaultInjectingOs no_sfr;
  no_sfr.set_recording(true);
  no_sfr.AddRule(FaultRule{"SyncFileRange", 1, FaultRule::Action::kFail, EIO, true});
  auto se = MakeEngine(&no_sfr);
  ASSERT_EQ(Run(*se, 1, v1).kind, OutcomeKind::kApplied);
  out = Run(*se, 2, v2);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
  size_t sfr = 0;
  for (const auto& c : no_sfr.calls()) sfr += c.op == "SyncFileRange";
  EXPECT_GT(sfr, 0u) << "the rule never fired";
}

TEST_F(EngineTest, SourceChangingDuringTheCopyIsRetryable) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1, TreeOptions{4, 1, false, false, 20u << 20});  // 3 chunks per file
  bool touched = false;
  EngineConfig c;
  c.probe = probe;
  c.checkpoint = [&](const char* point) {
    if (std::string(point) != "copying" || touched) return;
    touched = true;  // the publisher rewrites the file being copied
    WriteFile(v1 + "/f0.bin", "rewritten mid-copy", 0755, 1900000000);
  };
  Engine e(c);
  auto out = e.Refresh(Request(root, 1, v1), nullptr, cancel);
  ASSERT_TRUE(touched);
  EXPECT_KIND(out, OutcomeKind::kRetryableError);
  EXPECT_NE(out.message.find("source changed"), std::string::npos) << out.message;
  EXPECT_FALSE(fs::exists(Live()));
  EXPECT_EQ(Strays(root, "pkg"), "");
  // A change to a file already staged (here: after staging) is caught by the final re-check.
  EngineConfig c2;
  c2.probe = probe;
  bool chmodded = false;
  c2.checkpoint = [&](const char* point) {
    if (std::string(point) != "copying" || chmodded) return;
    chmodded = true;
    ::chmod((v1 + "/f3.bin").c_str(), 0600);
  };
  Engine e2(c2);
  auto out2 = e2.Refresh(Request(root, 1, v1), nullptr, cancel);
  EXPECT_KIND(out2, OutcomeKind::kRetryableError);
  EXPECT_FALSE(fs::exists(Live()));
  auto ok = e2.Refresh(Request(root, 1, v1), nullptr, cancel);
  EXPECT_KIND(ok, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
}

// The re-check after staging (beside the syncfs; split over threads by top-level entry when
// threads > 1) catches an unchanged, linked file changed anywhere in the tree meanwhile, and
// names the first changed path in tree order whatever the number of threads.
TEST_F(EngineTest, RecheckCatchesAChangedLinkedFileOnAnyNumberOfThreads) {
  std::string v1 = tmp / "v1", v2 = tmp / "v2";
  MakeVersion(v1, 1, TreeOptions{40, 4, false, false, 300});
  CopyTree(v1, v2);
  WriteFile(v2 + "/f0.bin", "changed", 0644, 1800000000);
  ASSERT_TRUE(fs::exists(v2 + "/d1/f5.bin"));
  ASSERT_TRUE(fs::exists(v2 + "/d3/f7.bin"));
  for (int threads : {1, 2, 4}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    root = tmp / ("dp" + std::to_string(threads));
    fs::create_directories(root);
    ASSERT_EQ(MakeEngine()->Refresh(Request(root, 1, v1), nullptr, cancel).kind, OutcomeKind::kApplied);
    auto before = Snap(Live());
    EngineConfig c;
    c.probe = probe;
    c.threads = threads;
    bool touched = false;
    c.checkpoint = [&](const char* point) {
      if (std::string(point) != "staging" || touched) return;
      touched = true;  // after the scan: the staging links both as unchanged
      SetMtime(v2 + "/d3/f7.bin", 1900000000);
      SetMtime(v2 + "/d1/f5.bin", 1900000001);
    };
    Engine e(c);
    auto out = e.Refresh(Request(root, 2, v2), nullptr, cancel);
    ASSERT_TRUE(touched);
    EXPECT_KIND(out, OutcomeKind::kRetryableError);
    EXPECT_NE(out.message.find("source changed"), std::string::npos) << out.message;
    EXPECT_NE(out.message.find("d1/f5.bin"), std::string::npos) << out.message;
    EXPECT_EQ(Diff(before, Snap(Live())), "");
    EXPECT_EQ(Strays(root, "pkg"), "");
    // Put back, the next attempt applies.
    for (const char* f : {"/d1/f5.bin", "/d3/f7.bin"}) {
      SetMtime(v2 + f, Snap(v1)[std::string(f + 1)].mtime_ns / 1000000000,
               Snap(v1)[std::string(f + 1)].mtime_ns % 1000000000);
    }
    auto ok = e.Refresh(Request(root, 2, v2), nullptr, cancel);
    EXPECT_KIND(ok, OutcomeKind::kApplied);
    EXPECT_EQ(Diff(Snap(v2), Snap(Live())), "");
  }
}

TEST_F(EngineTest, NotEnoughFreeSpaceIsRetryableBeforeCopying) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1);
  auto e = MakeEngine();
  workers::RefreshOptions opt;
  opt.reserve_bytes = std::uint64_t{1} << 62;
  auto out = Run(*e, 1, v1, opt);
  EXPECT_KIND(out, OutcomeKind::kRetryableError);
  EXPECT_EQ(out.error.code, ErrorCode::kResourceExhausted);
  EXPECT_FALSE(fs::exists(Live()));
  EXPECT_EQ(Strays(root, "pkg"), "");
}

// ---- Scans on several threads ----

// A disk whose every stat takes a while, as with cold caches (the engine walks on several
// threads only then); it records how many stats were ever in flight at once.
class ColdDiskOs : public FaultInjectingOs {
 public:
  int FstatAt(int dirfd, const char* path, struct stat* st, int flags) override {
    const int now = ++in_flight_;
    int seen = max_in_flight.load();
    while (now > seen && !max_in_flight.compare_exchange_weak(seen, now)) {
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(60);
    while (std::chrono::steady_clock::now() < until) std::this_thread::yield();  // the "disk read"
    --in_flight_;
    return FaultInjectingOs::FstatAt(dirfd, path, st, flags);
  }
  std::atomic<int> max_in_flight{0};

 private:
  std::atomic<int> in_flight_{0};
};

// EngineConfig::threads splits the source scan and the live walk by top-level directory when
// the caches are cold: the engine must see what one thread sees (the same manifest of a deep
// tree, the same refusal of a hostile entry deep in a subtree, a live file changed in place
// still copied afresh).
TEST_F(EngineTest, ScansOnSeveralThreadsSeeWhatOneThreadSees) {
  const std::string src = tmp / "deep";
  TreeOptions opt;
  opt.files = 60;
  opt.dirs = 6;
  MakeVersion(src, 1, opt);
  for (int i = 0; i < 8; ++i) {
    WriteFile(src + "/d2/a/b" + std::to_string(i % 3) + "/c/x" + std::to_string(i), Content("x" + std::to_string(i), 100 + i));
  }
  fs::create_directories(src + "/d4/empty-deep/empty");
  fs::create_directories(src + "/d3/up");
  fs::create_symlink("../../d2/a", src + "/d3/up/link");  // in-package, two levels down
  std::map<int, workers::Manifest> manifests;
  std::map<int, std::unique_ptr<Engine>> engines;
  std::map<int, std::unique_ptr<ColdDiskOs>> disks;
  for (int threads : {1, 4}) {
    SCOPED_TRACE(threads);
    const std::string r = tmp / ("dp" + std::to_string(threads));
    fs::create_directories(r);
    disks[threads] = std::make_unique<ColdDiskOs>();
    EngineConfig c;
    c.os = disks[threads].get();
    c.probe = probe;
    c.threads = threads;
    engines[threads] = std::make_unique<Engine>(c);
    auto out = engines[threads]->Refresh(Request(r, 1, src), nullptr, cancel);
    EXPECT_KIND(out, OutcomeKind::kApplied);
    EXPECT_EQ(Diff(Snap(src), Snap(r + "/pkg")), "");
    EXPECT_EQ(out.stats.cold_caches, threads > 1);
    // A first install of a small package, cold: every file read ahead; no spare to list.
    EXPECT_EQ(out.stats.prefetched_files, threads > 1 ? out.stats.files_copied : 0u);
    EXPECT_EQ(out.stats.prefetched_dirs, 0u);
    auto m = engines[threads]->InstalledManifest(r, "pkg");
    ASSERT_TRUE(m.ok()) << m.error().message;
    manifests[threads] = std::move(m).value();
  }
  EXPECT_EQ(manifests[1].entries, manifests[4].entries);
  EXPECT_GT(manifests[4].entries.size(), 80u);
  {
    // The real (warm) disk: the scan after the probe goes straight into the result, in order.
    const std::string r = tmp / "dp-warm";
    fs::create_directories(r);
    EngineConfig c;
    c.probe = probe;
    c.threads = 4;
    Engine warm(c);
    EXPECT_KIND(warm.Refresh(Request(r, 1, src), nullptr, cancel), OutcomeKind::kApplied);
    auto m = warm.InstalledManifest(r, "pkg");
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(m->entries, manifests[1].entries);
  }
  EXPECT_EQ(disks[1]->max_in_flight.load(), 1);
  EXPECT_GE(disks[4]->max_in_flight.load(), 2) << "the slow top level did not make the scan go parallel";

  // A live file rewritten in place, deep down, is copied afresh rather than linked.
  const std::string r4 = tmp / "dp4";
  const std::string deep_live = r4 + "/pkg/d2/a/b1/c/x1";
  WriteFile(deep_live, "changed in place on the DP", 0644, 1700000123);
  const std::string v2 = tmp / "deep2";
  fs::copy(src, v2, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  for (auto it = fs::recursive_directory_iterator(src); it != fs::recursive_directory_iterator(); ++it) {
    struct stat st;
    ASSERT_EQ(::lstat(it->path().c_str(), &st), 0);
    const std::string twin = v2 + "/" + it->path().lexically_relative(src).string();
    const struct timespec times[2] = {{0, UTIME_OMIT}, st.st_mtim};
    ASSERT_EQ(::utimensat(AT_FDCWD, twin.c_str(), times, AT_SYMLINK_NOFOLLOW), 0);
  }
  // And a source file changed: the scan reads it ahead as it finds it (the quick check already
  // says it will be copied); the live file changed in place is read ahead once planned.
  WriteFile(v2 + "/d2/a/b0/c/x0", Content("x0 in v2", 300), 0644, 1700000456);
  disks[4]->max_in_flight = 0;
  std::uint64_t live_dirs = 0;  // the seeded spare's directories: the live tree's ("." too)
  for (const auto& [rel, node] : Snap(r4 + "/pkg")) live_dirs += node.type == 'd';
  auto out = engines[4]->Refresh(Request(r4, 2, v2), nullptr, cancel);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_GE(disks[4]->max_in_flight.load(), 3);  // the live walk beside the scan, both split
  // Cold, the refresh from the spare the install seeded read ahead (engine/prefetch.h): the
  // two files to copy and every directory of the spare. The result is the same.
  EXPECT_TRUE(out.stats.cold_caches);
  EXPECT_EQ(out.stats.prefetched_files, 2u);
  EXPECT_EQ(out.stats.prefetched_dirs, live_dirs);
  EXPECT_EQ(out.stats.files_copied, 2u);
  EXPECT_EQ(Diff(Snap(v2), Snap(r4 + "/pkg")), "");

  // A FIFO deep in one subtree is refused, by name, as with one thread.
  const std::string v3 = tmp / "deep3";
  fs::copy(src, v3, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  ASSERT_EQ(::mkfifo((v3 + "/d5/deeper/still/fifo").c_str(), 0644), -1);  // no parent yet
  fs::create_directories(v3 + "/d5/deeper/still");
  ASSERT_EQ(::mkfifo((v3 + "/d5/deeper/still/fifo").c_str(), 0644), 0);
  for (int threads : {1, 4}) {
    SCOPED_TRACE(threads);
    auto refused = engines[threads]->Refresh(Request(tmp / ("dp" + std::to_string(threads)), 3, v3), nullptr, cancel);
    EXPECT_KIND(refused, OutcomeKind::kPermanentError);
    EXPECT_NE(refused.message.find("d5/deeper/still/fifo"), std::string::npos) << refused.message;
  }
}

// Stats of files slow, of directories not: a top level of directories whose inodes one read
// brought in, over files spread on the disk.
class SlowFilesOs : public ColdDiskOs {
 public:
  int FstatAt(int dirfd, const char* path, struct stat* st, int flags) override {
    const std::string name(path);
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".bin") == 0) {
      return ColdDiskOs::FstatAt(dirfd, path, st, flags);
    }
    return FaultInjectingOs::FstatAt(dirfd, path, st, flags);
  }
};

// A top level that stats fast does not make a cold tree look warm: the first subtree, timed,
// does (SubtreeLooksCold), and the rest of the scan and of the live walk is split.
TEST_F(EngineTest, ColdFilesUnderAWarmTopLevelAreFoundCold) {
  const std::string src = tmp / "dirs-only";
  for (int d = 0; d < 4; ++d) {
    for (int f = 0; f < 10; ++f) {
      WriteFile(src + "/d" + std::to_string(d) + "/f" + std::to_string(f) + ".bin",
                Content("x" + std::to_string(d * 10 + f), 50));
    }
  }
  std::map<int, workers::Manifest> manifests;
  for (int threads : {1, 4}) {
    SCOPED_TRACE(threads);
    const std::string r = tmp / ("dp" + std::to_string(threads));
    fs::create_directories(r);
    SlowFilesOs disk;
    EngineConfig c;
    c.os = &disk;
    c.probe = probe;
    c.threads = threads;
    Engine e(c);
    auto out = e.Refresh(Request(r, 1, src), nullptr, cancel);
    EXPECT_KIND(out, OutcomeKind::kApplied);
    EXPECT_EQ(Diff(Snap(src), Snap(r + "/pkg")), "");
    EXPECT_EQ(out.stats.cold_caches, threads > 1);
    if (threads > 1) {
      EXPECT_GE(disk.max_in_flight.load(), 2) << "the scan was not split";
    } else {
      EXPECT_EQ(disk.max_in_flight.load(), 1);
    }
    auto m = e.InstalledManifest(r, "pkg");
    ASSERT_TRUE(m.ok());
    manifests[threads] = std::move(m).value();
    // The live walk too (and the source scan again) on the next refresh.
    disk.max_in_flight = 0;
    auto again = e.Refresh(Request(r, 2, src), nullptr, cancel);
    EXPECT_KIND(again, OutcomeKind::kApplied);
    EXPECT_EQ(again.stats.cold_caches, threads > 1);
    if (threads > 1) {
      EXPECT_GE(disk.max_in_flight.load(), 3) << "the walks were not both split";
    }
  }
  EXPECT_EQ(manifests[1].entries, manifests[4].entries);
}

// ScanSource's ColdFileHook (the engine reads ahead changed files with it): called once for
// every regular file when the scan finds the caches cold, whichever way it found them (a slow
// top level, or a slow first subtree below a fast one), and never otherwise (one thread, warm).
TEST_F(EngineTest, AColdScanOffersEveryFileOnceToItsHook) {
  const std::string src = tmp / "hooked";
  for (int d = 0; d < 4; ++d) {
    for (int f = 0; f < 10; ++f) {
      WriteFile(src + "/d" + std::to_string(d) + "/sub/f" + std::to_string(f) + ".bin", "x");
    }
  }
  // Not ".bin": SlowFilesOs keeps it fast, so the top level looks warm even on a loaded machine.
  WriteFile(src + "/top.txt", "t");
  fs::create_symlink("top.txt", src + "/link");
  std::set<std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(src)) {
    if (e.is_regular_file() && !e.is_symlink()) {
      files.insert(e.path().lexically_relative(src).string());
    }
  }
  ASSERT_EQ(files.size(), 41u);
  workers::internal::Fd dir(&workers::RealOs(), ::open(src.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  ASSERT_TRUE(dir.valid());
  const int fd = dir.get();
  struct Case {
    const char* name;
    workers::Os* os;
    int ways;
    bool must_be_cold;
  };
  ColdDiskOs cold_everywhere;
  SlowFilesOs cold_below;  // dirs stat fast, files slowly: found cold by the first subtree
  Case cases[] = {{"cold top level", &cold_everywhere, 4, true},
                  {"cold below a fast top level", &cold_below, 4, true},
                  {"one thread", &cold_everywhere, 1, false},
                  {"the real disk", &workers::RealOs(), 4, false}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::mutex mu;
    std::multiset<std::string> offered;
    bool cold = false;
    auto scanned = workers::internal::ScanSource(*c.os, fd, c.ways, &cold, 0, [&](const workers::internal::SrcEntry& e) {
      EXPECT_EQ(e.type, workers::EntryType::kFile) << e.path;
      std::lock_guard lock(mu);
      offered.insert(e.path);
    });
    ASSERT_TRUE(scanned.ok()) << scanned.error().message;
    EXPECT_EQ(scanned->size(), 1 + 1 + 1 + 4 * 2 + 40u);  // root, top.txt, link, dirs, files
    if (c.must_be_cold) {
      EXPECT_TRUE(cold);
    }
    // The real disk is warm here, but a loaded machine may make it look cold: then it must
    // offer every file, as the simulated cold disks do.
    if (cold) {
      EXPECT_EQ(offered, std::multiset<std::string>(files.begin(), files.end()));
    } else {
      EXPECT_TRUE(offered.empty()) << offered.size() << " files offered though found warm";
    }
  }
}

// ---- Hostile sources ----

TEST_F(EngineTest, HostileSourcesAreRefused) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  auto live_before = Snap(Live());
  int n = 0;
  auto check = [&](const std::string& what, const std::function<void(const std::string&)>& make) {
    SCOPED_TRACE(what);
    std::string src = tmp / ("hostile" + std::to_string(++n));
    MakeVersion(src, 2);
    make(src);
    auto out = Run(*e, 2, src);
    EXPECT_KIND(out, OutcomeKind::kPermanentError);
    EXPECT_EQ(Diff(live_before, Snap(Live())), "");
    EXPECT_EQ(Strays(root, "pkg"), "");
  };
  check("absolute symlink", [](const std::string& s) { fs::create_symlink("/etc/passwd", s + "/x"); });
  check("escaping symlink", [](const std::string& s) { fs::create_symlink("../../outside", s + "/d1/x"); });
  check("escape through an in-package symlink", [](const std::string& s) {
    fs::create_directories(s + "/a/b");
    fs::create_symlink("..", s + "/a/up");       // a/up -> package root (fine alone)
    fs::create_symlink("up/..", s + "/a/esc");   // a/up/.. = parent of the package
  });
  check("fifo", [](const std::string& s) { ASSERT_EQ(::mkfifo((s + "/fifo").c_str(), 0644), 0); });
  check("socket", [](const std::string& s) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string p = s + "/sock";
    ASSERT_LT(p.size(), sizeof addr.sun_path);
    std::strcpy(addr.sun_path, p.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);
  });
  if (::geteuid() == 0) {
    check("device node", [](const std::string& s) {
      ASSERT_EQ(::mknod((s + "/null").c_str(), S_IFCHR | 0644, makedev(1, 3)), 0);
    });
  }
  check("oversized path", [](const std::string& s) {
    int fd = ::open(s.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    std::string comp(200, 'n');
    for (int i = 0; i < 22; ++i) {  // > 4096 bytes relative: build it with *at calls
      ASSERT_EQ(::mkdirat(fd, comp.c_str(), 0755), 0) << std::strerror(errno);
      int sub = ::openat(fd, comp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      ::close(fd);
      fd = sub;
    }
    ::close(fd);
  });
  // Bad requests.
  auto bad = Request(root, 2, v1, "../evil");
  EXPECT_KIND(e->Refresh(bad, nullptr, cancel), OutcomeKind::kPermanentError);
  bad = Request(root, 2, v1 + "/../v1");
  EXPECT_KIND(e->Refresh(bad, nullptr, cancel), OutcomeKind::kPermanentError);
  EXPECT_EQ(Diff(live_before, Snap(Live())), "");
}

TEST_F(EngineTest, InPackageSymlinksAreKept) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1);
  fs::create_symlink("d1/f1.bin", v1 + "/top-link");
  fs::create_symlink("../d2", v1 + "/d1/sibling");
  fs::create_symlink("sibling/../link-to-f0", v1 + "/d1/chain");
  fs::create_symlink("nowhere", v1 + "/dangling");
  SetMtime(v1 + "/d1", 1650000000);
  SetMtime(v1, 1650000001);
  auto e = MakeEngine();
  auto out = Run(*e, 1, v1);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
}

TEST_F(EngineTest, OddNamesRoundTrip) {
  std::string v1 = tmp / "v1";
  fs::create_directories(v1);
  for (std::string name : {"with space", "tab\there", "new\nline", "per%cent", "ünïcødé", "-dash"}) {
    WriteFile(v1 + "/" + name, name, 0640, 1700000000);
  }
  auto e = MakeEngine();
  auto out = Run(*e, 1, v1);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
  auto report = e->Verify(root, "pkg");
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->clean());
}

// ---- Verify / repair ----

TEST_F(EngineTest, VerifyReportsAndRepairRestores) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1);
  auto e = MakeEngine();
  ASSERT_EQ(Run(*e, 1, v1).kind, OutcomeKind::kApplied);
  // Same size and mtime, different bytes: only the content hash sees it.
  std::string content = ReadFile(Live() + "/d1/f4.bin");
  content[3] = static_cast<char>(content[3] + 1);
  {
    int fd = ::open((Live() + "/d1/f4.bin").c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, content.data(), content.size(), 0), static_cast<ssize_t>(content.size()));
    ::close(fd);
    SetMtime(Live() + "/d1/f4.bin", 1700000001);
  }
  fs::remove(Live() + "/d2/f5.bin");
  WriteFile(Live() + "/intruder", "x");
  auto report = e->Verify(root, "pkg");
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  EXPECT_EQ(report->missing, std::vector<std::string>{"d2/f5.bin"});
  EXPECT_EQ(report->extra, std::vector<std::string>{"intruder"});
  EXPECT_EQ(report->changed, std::vector<std::string>{"d1/f4.bin"});
  auto quick = e->Verify(root, "pkg", workers::VerifyOptions{false});
  ASSERT_TRUE(quick.ok());
  EXPECT_TRUE(quick->changed.empty());

  auto out = e->Repair(root, "pkg", {}, nullptr, cancel);
  EXPECT_KIND(out, OutcomeKind::kApplied);
  EXPECT_EQ(out.stats.files_copied, 2u);
  EXPECT_EQ(Diff(Snap(v1), Snap(Live())), "");
  report = e->Verify(root, "pkg");
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->clean());
  EXPECT_KIND(e->Repair(root, "pkg", {}, nullptr, cancel), OutcomeKind::kUpToDate);
  EXPECT_EQ(Strays(root, "pkg"), "");

  // A source that moved on cannot restore the installed version.
  fs::remove(Live() + "/f0.bin");
  WriteFile(v1 + "/f0.bin", "republished", 0644, 1900000000);
  auto live_before = Snap(Live());
  auto refused = e->Repair(root, "pkg", {}, nullptr, cancel);
  EXPECT_KIND(refused, OutcomeKind::kPermanentError);
  EXPECT_EQ(Diff(live_before, Snap(Live())), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
}

TEST_F(EngineTest, CheckDpRootRefusesSymlinkedMetaDir) {
  auto e = MakeEngine();
  EXPECT_TRUE(e->CheckDpRoot(root).ok());
  EXPECT_TRUE(fs::is_empty(root + "/.despool/check"));
  std::string other = tmp / "dp2";
  fs::create_directories(other);
  fs::create_directories(tmp / "elsewhere");
  fs::create_symlink(tmp / "elsewhere", other + "/.despool");
  auto s = e->CheckDpRoot(other);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_FALSE(e->CheckDpRoot(tmp / "missing").ok());
}

TEST_F(EngineTest, LivePackageSymlinkIsRefused) {
  std::string v1 = tmp / "v1";
  MakeVersion(v1, 1);
  fs::create_directories(tmp / "elsewhere");
  fs::create_symlink(tmp / "elsewhere", Live());
  auto e = MakeEngine();
  auto out = Run(*e, 1, v1);
  EXPECT_KIND(out, OutcomeKind::kPermanentError);
  EXPECT_TRUE(fs::is_symlink(Live()));
  EXPECT_TRUE(fs::is_empty(tmp / "elsewhere"));
}

TEST(ManifestTest, RoundTripAndCorruption) {
  workers::Manifest m;
  m.package = "p";
  m.version = 9;
  m.source = "/src/with space/%";
  m.entries = {{".", workers::EntryType::kDir, 0755, 1, 0, 0, {}},
               {"a b", workers::EntryType::kFile, 0644, -5, 10, 0xabcdef, {}},
               {"l\n", workers::EntryType::kSymlink, 0, 7, 0, 0, "a b"}};
  std::string text = workers::SerializeManifest(m);
  auto back = workers::ParseManifest(text);
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(back->entries, m.entries);
  EXPECT_EQ(back->source, m.source);
  EXPECT_EQ(back->version, 9u);
  for (size_t cut : {size_t{0}, size_t{10}, text.size() / 2, text.size() - 1}) {
    EXPECT_FALSE(workers::ParseManifest(text.substr(0, cut)).ok()) << cut;
  }
  std::string flipped = text;
  flipped[text.find("a%20b")] = 'A';
  EXPECT_EQ(workers::ParseManifest(flipped).error().code, ErrorCode::kCorruption);
}

// A header line under another key is corrupt even with a valid checksum (it used to read as an
// empty value: a "sourcX" line gave an empty source).
TEST(ManifestTest, AHeaderLineUnderAnotherKeyIsCorrupt) {
  workers::Manifest m;
  m.package = "p";
  m.version = 3;
  m.source = "/src/p";
  m.entries = {{".", workers::EntryType::kDir, 0755, 1, 0, 0, {}}};
  const std::string text = workers::SerializeManifest(m);
  const std::string body = text.substr(0, text.rfind("end "));
  ASSERT_TRUE(workers::ParseManifest(text).ok());
  for (const char* key : {"package", "version", "source", "entries"}) {
    std::string bad = body;
    const std::string line = std::string("\n") + key + " ";
    const auto at = bad.find(line);
    ASSERT_NE(at, std::string::npos) << key;
    bad[at + line.size() - 2] = 'X';  // "sourcX "
    char trailer[32];
    std::snprintf(trailer, sizeof trailer, "end %016llx\n",
                  static_cast<unsigned long long>(XXH3_64bits(bad.data(), bad.size())));
    bad += trailer;
    auto parsed = workers::ParseManifest(bad);
    ASSERT_FALSE(parsed.ok()) << key;
    EXPECT_EQ(parsed.error().code, ErrorCode::kCorruption) << key;
    if (std::string(key) == "package" || std::string(key) == "version") {
      EXPECT_FALSE(workers::ParseManifestVersion(bad).ok()) << key;
    }
  }
}

}  // namespace
}  // namespace despool::enginetest
