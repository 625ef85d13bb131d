// The seed's failure as a regression test: SMS 1.2's Despooler emptied package directories
// when files were in use. Here a separate reader process holds a file of the live package in
// one of three ways; the refresh must defer, name the path and the holder's pid, and leave the
// live tree byte-for-byte the old version; after the reader goes away the refresh applies.
#include <gtest/gtest.h>

#include "despool/workers/engine.h"
#include "despool/workers/inuse.h"
#include "workers/engine_test_util.h"
#include "workers/test_holders.h"

namespace despool::enginetest {
namespace {

using despool::testing::HolderProcess;

class SeedTest : public ::testing::TestWithParam<HolderProcess::Mode> {
 protected:
  void SetUp() override { ASSERT_TRUE(workers::IgnoreLeaseBreakSignal().ok()); }
  TempDir tmp;
  CancelToken cancel;
};

std::string ModeName(HolderProcess::Mode m) {
  switch (m) {
    case HolderProcess::Mode::kOpen: return "HeldOpen";
    case HolderProcess::Mode::kMmap: return "MmapOnly";
    case HolderProcess::Mode::kExec: return "RunningExecutable";
  }
  return "unknown";
}

TEST_P(SeedTest, InUseFileDefersAndLiveStaysOld) {
  const auto mode = GetParam();
  std::string v1 = tmp / "v1", v2 = tmp / "v2", root = tmp / "dp";
  fs::create_directories(root);
  MakeVersion(v1, 1);
  MakeVersion(v2, 2);
  // bin/tool: an executable in both versions (different content in v2).
  fs::create_directories(v1 + "/bin");
  fs::create_directories(v2 + "/bin");
  HolderProcess::CopyExecutable("/bin/sleep", v1 + "/bin/tool");
  HolderProcess::CopyExecutable("/bin/true", v2 + "/bin/tool");
  for (const auto& v : {v1, v2}) {
    SetMtime(v + "/bin/tool", 1700000000);
    SetMtime(v + "/bin", 1650000000);
    SetMtime(v, 1650000001);
  }
  Engine engine;  // the real default probe (lease, then /proc to name holders)
  ASSERT_TRUE(engine.CheckDpRoot(root).ok());
  ASSERT_EQ(engine.Refresh(Request(root, 1, v1), nullptr, cancel).kind, OutcomeKind::kApplied);
  const auto old_snap = Snap(root + "/pkg");
  ASSERT_EQ(Diff(Snap(v1), old_snap), "");

  const std::string held = mode == HolderProcess::Mode::kExec ? "bin/tool" : "d1/f1.bin";
  std::vector<std::string> args;
  if (mode == HolderProcess::Mode::kExec) args = {"3600"};
  HolderProcess holder(mode, root + "/pkg/" + held, args);
  ASSERT_TRUE(holder.ready()) << holder.error();

  auto out = engine.Refresh(Request(root, 2, v2), nullptr, cancel);
  ASSERT_EQ(out.kind, OutcomeKind::kDeferred) << workers::OutcomeKindName(out.kind) << ": "
                                              << out.message;
  EXPECT_TRUE(out.in_use.complete) << out.in_use.incomplete_reason;
  EXPECT_EQ(out.in_use.in_use, std::vector<std::string>{held});
  bool named = false;
  for (const auto& h : out.in_use.holders) named = named || (h.pid == holder.pid() && h.path == held);
  EXPECT_TRUE(named) << "holder pid " << holder.pid() << " not named";
  EXPECT_GT(out.suggested_delay.count(), 0);
  // Byte for byte the old version, and still installed as such.
  EXPECT_EQ(Diff(old_snap, Snap(root + "/pkg")), "");
  EXPECT_EQ(**engine.InstalledVersion(root, "pkg"), 1u);
  // Again while still held: still deferred, still intact.
  EXPECT_EQ(engine.Refresh(Request(root, 2, v2), nullptr, cancel).kind, OutcomeKind::kDeferred);
  EXPECT_EQ(Diff(old_snap, Snap(root + "/pkg")), "");

  holder.Stop();
  auto applied = engine.Refresh(Request(root, 2, v2), nullptr, cancel);
  ASSERT_EQ(applied.kind, OutcomeKind::kApplied) << applied.message;
  EXPECT_TRUE(applied.stats.reused_staging);
  EXPECT_EQ(applied.stats.files_copied, 0u);
  EXPECT_EQ(Diff(Snap(v2), Snap(root + "/pkg")), "");
  EXPECT_EQ(Strays(root, "pkg"), "");
}

INSTANTIATE_TEST_SUITE_P(Readers, SeedTest,
                         ::testing::Values(HolderProcess::Mode::kOpen, HolderProcess::Mode::kMmap,
                                           HolderProcess::Mode::kExec),
                         [](const auto& info) { return ModeName(info.param); });

// A reader of a file that the refresh does not change is not in the way (it keeps the same
// inode, hard-linked into the new tree) — unless any_open_blocks asks for that.
TEST(SeedExtraTest, UnchangedHeldFileDoesNotBlockUnlessAsked) {
  ASSERT_TRUE(workers::IgnoreLeaseBreakSignal().ok());
  TempDir tmp;
  CancelToken cancel;
  std::string v1 = tmp / "v1", v2 = tmp / "v2", root = tmp / "dp";
  fs::create_directories(root);
  MakeVersion(v1, 1);
  CopyTree(v1, v2);
  WriteFile(v2 + "/d2/f2.bin", "changed", 0644, 1800000000);
  SetMtime(v2 + "/d2", 1650000000);
  Engine engine;
  ASSERT_EQ(engine.Refresh(Request(root, 1, v1), nullptr, cancel).kind, OutcomeKind::kApplied);
  HolderProcess holder(HolderProcess::Mode::kOpen, root + "/pkg/d1/f1.bin");
  ASSERT_TRUE(holder.ready()) << holder.error();
  auto req = Request(root, 2, v2);
  req.options.any_open_blocks = true;
  auto blocked = engine.Refresh(req, nullptr, cancel);
  EXPECT_EQ(blocked.kind, OutcomeKind::kDeferred) << blocked.message;
  EXPECT_EQ(blocked.in_use.in_use, std::vector<std::string>{"d1/f1.bin"});
  auto out = engine.Refresh(Request(root, 2, v2), nullptr, cancel);
  EXPECT_EQ(out.kind, OutcomeKind::kApplied) << out.message;
  EXPECT_EQ(Diff(Snap(v2), Snap(root + "/pkg")), "");
  // force swaps even over a changed held file; the reader keeps the old contents.
  std::string v3 = tmp / "v3";
  MakeVersion(v3, 3);
  auto forced_req = Request(root, 3, v3);
  forced_req.options.force = true;
  auto forced = engine.Refresh(forced_req, nullptr, cancel);
  EXPECT_EQ(forced.kind, OutcomeKind::kApplied) << forced.message;
  EXPECT_EQ(Diff(Snap(v3), Snap(root + "/pkg")), "");
  EXPECT_EQ(::kill(holder.pid(), 0), 0);  // the reader is undisturbed
}

}  // namespace
}  // namespace despool::enginetest
