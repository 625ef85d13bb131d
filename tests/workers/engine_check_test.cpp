// CheckDpRoot when several workers start on one DP at once, and Recover's cleanup of the
// scratch dirs that interrupted checks leave behind.
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine_test_util.h"

namespace despool::enginetest {
namespace {

std::vector<std::string> CheckDirEntries(const std::string& root) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root + "/.despool/check")) {
    names.push_back(e.path().filename().string());
  }
  return names;
}

TEST(EngineCheckDpRoot, ConcurrentChecksOnOneDpAllSucceedAndLeaveNothing) {
  TempDir tmp;
  const std::string root = tmp / "dp";
  fs::create_directories(root);
  constexpr int kThreads = 8, kRounds = 25;
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      workers::Engine engine;  // one engine per "worker"
      for (int i = 0; i < kRounds && failures[t].empty(); ++i) {
        Status s = engine.CheckDpRoot(root);
        if (!s.ok()) failures[t] = s.ToString();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], "") << "thread " << t;
  EXPECT_TRUE(CheckDirEntries(root).empty());
}

TEST(EngineCheckDpRoot, RecoverRemovesScratchOfDeadProcessesOnly) {
  TempDir tmp;
  const std::string root = tmp / "dp";
  fs::create_directories(root);
  workers::Engine engine;
  ASSERT_TRUE(engine.CheckDpRoot(root).ok());

  // A pid that is certainly gone: a child we started and reaped.
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const std::string dead = std::to_string(child) + ".1";
  const std::string alive = std::to_string(::getpid()) + ".2";  // "a check in progress"
  fs::create_directories(root + "/.despool/check/" + dead + "/a");
  fs::create_directories(root + "/.despool/check/" + alive + "/a");

  ASSERT_TRUE(engine.Recover(root).ok());
  EXPECT_EQ(CheckDirEntries(root), std::vector<std::string>{alive});
}

}  // namespace
}  // namespace despool::enginetest
