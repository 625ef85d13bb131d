// `despoolctl watch` on a pseudo-terminal draws progress bars (files, bytes, rate) and redraws
// them in place; state changes are printed above the bars.
#include <gtest/gtest.h>

#include <chrono>

#include "ctl/fake_broker.h"
#include "ctl/process.h"
#include "despool/common/time.h"

namespace despool::ctl {
namespace {

using despool::testing::Child;
using despool::testing::FakeBroker;
using despool::testing::MakeJob;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

TEST(WatchPtyTest, DrawsProgressBarsOnATerminal) {
  FakeBroker broker;
  Child watch({despool::testing::Despoolctl(), "--broker", broker.frontend(), "--events", broker.events(),
               "--timeout", "5s", "watch", "--dp", "lab1"},
              /*use_pty=*/true);
  auto job = MakeJob("j-pty", "lab1", "bigpkg", 7, msg::JobState::kRunning, NowMs());
  // Progress events are live only: keep publishing (the subscription may still be connecting)
  // until a bar is on the screen.
  std::uint64_t done = 0;
  const auto deadline = Clock::now() + milliseconds(20000);
  bool bar = false;
  while (!bar && Clock::now() < deadline) {
    done = std::min<std::uint64_t>(done + 10, 100);
    broker.EmitProgress(job, msg::Progress{done, 200, done * 1024 * 1024, 200ull * 1024 * 1024});
    bar = watch.ReadUntil([](const std::string& out, const std::string&) {
      return out.find("files") != std::string::npos && out.find("/s") != std::string::npos;
    }, milliseconds(200));
  }
  ASSERT_TRUE(bar) << watch.out();
  const std::string& out = watch.out();
  EXPECT_NE(out.find("bigpkg v7 @lab1 ["), std::string::npos) << out;
  EXPECT_NE(out.find("#"), std::string::npos) << out;
  EXPECT_NE(out.find("/200 files"), std::string::npos) << out;
  EXPECT_NE(out.find("MiB/200.0 MiB"), std::string::npos) << out;
  broker.Emit(job);  // a state change is printed as a line above the bars
  EXPECT_TRUE(watch.ReadUntil([](const std::string& o, const std::string&) {
    return o.find("job j-pty running") != std::string::npos;
  }, milliseconds(20000))) << watch.out();

  // A second update redraws in place: cursor up + clear to the end of the screen.
  const std::size_t before = out.size();
  bool redrawn = false;
  while (!redrawn && Clock::now() < deadline) {
    broker.EmitProgress(job, msg::Progress{150, 200, 150ull * 1024 * 1024, 200ull * 1024 * 1024});
    redrawn = watch.ReadUntil([before](const std::string& o, const std::string&) {
      return o.find("\x1b[1A\x1b[J", before > 0 ? before - 1 : 0) != std::string::npos &&
             o.find("150/200 files", before) != std::string::npos;
    }, milliseconds(200));
  }
  EXPECT_TRUE(redrawn) << watch.out();

  // The job ends: a permanent line, and the bar goes away.
  auto applied = job;
  applied.state = msg::JobState::kApplied;
  applied.updated_at_ms = NowMs() + 1;
  broker.Emit(applied);
  EXPECT_TRUE(watch.ReadUntil([](const std::string& o, const std::string&) {
    return o.find("job j-pty applied") != std::string::npos;
  }, milliseconds(20000))) << watch.out();
  watch.Stop();
}

TEST(WatchPtyTest, BarLineFitsTheTerminalWidth) {
  // The bars are redrawn by moving the cursor up one line per bar: a wrapped line would break
  // that, so every bar is cut to the width.
  FakeBroker broker;
  Child watch({despool::testing::Despoolctl(), "--broker", broker.frontend(), "--events", broker.events(),
               "watch"},
              true);
  auto job = MakeJob("j-wide", "lab1", std::string(60, 'p'), 7, msg::JobState::kRunning, NowMs());
  const auto deadline = Clock::now() + milliseconds(20000);
  bool bar = false;
  while (!bar && Clock::now() < deadline) {
    broker.EmitProgress(job, msg::Progress{1, 2, 3, 4});
    bar = watch.ReadUntil([](const std::string& out, const std::string&) { return out.find(" [") != std::string::npos; },
                          milliseconds(200));
  }
  ASSERT_TRUE(bar) << watch.out();
  watch.ReadUntil([](const std::string& out, const std::string&) { return out.find('\n') != std::string::npos; },
                  milliseconds(2000));
  const std::string& out = watch.out();
  const auto start = out.find(std::string(60, 'p'));
  ASSERT_NE(start, std::string::npos);
  const auto end = out.find_first_of("\r\n", start);
  ASSERT_NE(end, std::string::npos);
  EXPECT_LT(end - start, 100u) << out;  // the pty is 100 columns wide
  watch.Stop();
}

}  // namespace
}  // namespace despool::ctl
