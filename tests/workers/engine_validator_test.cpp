// A concurrent validator through many refreshes sees only complete versions, never an empty,
// partial or mixed package directory.
//
// Method (issue 4): every version gives each file a version-specific size (size = 100 * index
// + version, so a file's size names its version); the validator opens ROOT/<pkg> with
// O_DIRECTORY and walks it with fstatat; a scan counts only if the path's inode is the same
// before and after (a scan of a tree that was swapped away and is being retired is not
// evidence); at least one counted scan overlaps every switch. The engine is synchronised with
// the validator through observable state (counted-scan counter, checkpoint hook), not sleeps.
#include <dirent.h>
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <thread>

#include "despool/workers/engine.h"
#include "despool/workers/inuse.h"
#include "despool/workers/os.h"
#include "workers/engine_test_util.h"

namespace despool::enginetest {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kFiles = 24;
constexpr int kVersions = 25;

std::string FileRel(int i) {
  return (i % 3 == 0 ? std::string() : "d" + std::to_string(i % 3) + "/") +
         (i % 4 == 0 ? "sub/" : "") + "f" + std::to_string(i);
}

void MakeSized(const std::string& dir, int version) {
  for (int i = 0; i < kFiles; ++i) {
    WriteFile(dir + "/" + FileRel(i), std::string(static_cast<size_t>(100 * (i + 1) + version), 'x'),
              0644, 1700000000 + version);
  }
}

struct Scan {
  Clock::time_point start, end;
  bool counted = false;
  std::string problem;  // non-empty: a counted scan saw something other than one whole version
  int version = -1;
};

// Walks the directory open at fd; collects the version of each regular file from its size.
void Walk(int fd, std::map<int, int>* versions, int* files, std::string* problem) {
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  DIR* d = ::fdopendir(dup);
  if (d == nullptr) {
    ::close(dup);
    *problem = "fdopendir failed";
    return;
  }
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (::fstatat(fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      *problem = "entry vanished: " + name;
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      int sub = ::openat(fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) {
        *problem = "dir vanished: " + name;
        continue;
      }
      Walk(sub, versions, files, problem);
      ::close(sub);
    } else if (S_ISREG(st.st_mode)) {
      ++*files;
      (*versions)[static_cast<int>(st.st_size % 100)]++;
    }
  }
  ::closedir(d);
}

TEST(ValidatorTest, ConcurrentReaderSeesOnlyCompleteVersions) {
  ASSERT_TRUE(workers::IgnoreLeaseBreakSignal().ok());
  TempDir tmp;
  std::string root = tmp / "dp", live = root + "/pkg";
  fs::create_directories(root);
  for (int v = 1; v <= kVersions; ++v) MakeSized(tmp / ("v" + std::to_string(v)), v);

  std::mutex mu;
  std::condition_variable cv;
  std::vector<Scan> scans;
  std::uint64_t counted = 0;
  std::atomic<bool> stop{false};
  std::atomic<bool> installed{false};

  std::thread validator([&] {
    while (!stop.load()) {
      Scan s;
      s.start = Clock::now();
      struct stat before, after;
      const bool was_installed = installed.load();  // read before the open: no false alarm
      int fd = ::open(live.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) {
        if (was_installed) {
          s.counted = true;  // the package must never be absent once installed
          s.problem = "package directory missing: " + std::string(std::strerror(errno));
        }
      } else {
        ::fstat(fd, &before);
        std::map<int, int> versions;
        int files = 0;
        std::string problem;
        Walk(fd, &versions, &files, &problem);
        ::close(fd);
        bool same = ::stat(live.c_str(), &after) == 0 && after.st_ino == before.st_ino &&
                    after.st_dev == before.st_dev;
        if (same) {
          s.counted = true;
          if (!problem.empty()) {
            s.problem = problem;
          } else if (files != kFiles || versions.size() != 1) {
            s.problem = "files=" + std::to_string(files) + " versions=" +
                        std::to_string(versions.size());
          } else {
            s.version = versions.begin()->first;
          }
        }
      }
      s.end = Clock::now();
      std::lock_guard lock(mu);
      scans.push_back(s);
      if (s.counted) ++counted;
      cv.notify_all();
    }
  });

  // The engine waits, inside each refresh, for the validator to complete a counted scan just
  // before the swap and another just after it (before the old tree is retired).
  bool sync_failed = false;
  auto wait_for_counted_scan = [&] {
    std::unique_lock lock(mu);
    std::uint64_t target = counted + 1;
    if (!cv.wait_for(lock, std::chrono::seconds(20), [&] { return counted >= target; })) {
      sync_failed = true;
    }
  };
  std::vector<std::pair<Clock::time_point, Clock::time_point>> switches;
  Clock::time_point switch_start;
  workers::FaultInjectingOs nosync;  // durability is not what this test is about: keep it fast
  nosync.set_sync_noop(true);
  workers::EngineConfig config;
  config.os = &nosync;
  config.checkpoint = [&](const char* point) {
    std::string p = point;
    if (p == "checked") {
      switch_start = Clock::now();
      if (installed.load()) wait_for_counted_scan();
    } else if (p == "committed") {
      installed.store(true);
      wait_for_counted_scan();
    } else if (p == "retired") {
      switches.emplace_back(switch_start, Clock::now());
    }
  };
  workers::Engine engine(config);
  workers::CancelToken cancel;
  for (int v = 1; v <= kVersions; ++v) {
    auto out = engine.Refresh(Request(root, static_cast<std::uint64_t>(v), tmp / ("v" + std::to_string(v))),
                              nullptr, cancel);
    EXPECT_EQ(out.kind, workers::OutcomeKind::kApplied) << out.message;
    if (out.kind != workers::OutcomeKind::kApplied) break;
  }
  stop.store(true);
  validator.join();
  if (HasFailure()) return;
  EXPECT_FALSE(sync_failed) << "the validator made no progress";

  int n_counted = 0, last_version = 0;
  for (const auto& s : scans) {
    if (!s.counted) continue;
    ++n_counted;
    EXPECT_EQ(s.problem, "") << "a counted scan saw a broken package";
    if (s.problem.empty()) {
      EXPECT_GE(s.version, last_version) << "versions went backwards";
      last_version = s.version;
    }
  }
  EXPECT_EQ(last_version, kVersions);
  ASSERT_EQ(switches.size(), static_cast<size_t>(kVersions));
  for (size_t k = 0; k < switches.size(); ++k) {
    bool overlapped = false;
    for (const auto& s : scans) {
      overlapped = overlapped || (s.counted && s.problem.empty() && s.start < switches[k].second &&
                                  s.end > switches[k].first);
    }
    EXPECT_TRUE(overlapped) << "no counted scan overlaps switch " << k + 1;
  }
  std::cout << "[          ] " << scans.size() << " scans, " << n_counted << " counted\n";
}

// The same invariant checked deterministically at every single step: an observer runs after
// each call the engine makes through its OS interface and requires ROOT/<pkg> to be one
// complete version at that instant. (A non-atomic switch, e.g. two renames, fails here even
// though its window is far too short for a concurrent reader to hit reliably.)
TEST(ValidatorTest, LivePackageIsCompleteAfterEveryEngineStep) {
  TempDir tmp;
  std::string root = tmp / "dp", live = root + "/pkg";
  fs::create_directories(root);
  constexpr int kSteps = 4;
  for (int v = 1; v <= kSteps; ++v) MakeSized(tmp / ("v" + std::to_string(v)), v);
  workers::FaultInjectingOs observed;
  observed.set_sync_noop(true);
  bool installed = false;
  std::uint64_t checks = 0;
  std::vector<std::string> problems;
  observed.set_observer([&](const workers::OsCall& call) {
    int fd = ::open(live.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
      if (installed) problems.push_back("missing after " + call.op + "(" + call.arg + ")");
      return;
    }
    installed = true;
    std::map<int, int> versions;
    int files = 0;
    std::string problem;
    Walk(fd, &versions, &files, &problem);
    ::close(fd);
    ++checks;
    if (!problem.empty() || files != kFiles || versions.size() != 1) {
      problems.push_back("broken after " + call.op + "(" + call.arg + "): files=" +
                         std::to_string(files) + " versions=" + std::to_string(versions.size()) +
                         " " + problem);
    }
  });
  workers::EngineConfig config;
  config.os = &observed;
  config.probe = std::make_shared<FakeProbe>();
  config.threads = 1;  // the observer runs after every call, on the calling thread
  workers::Engine engine(config);
  workers::CancelToken cancel;
  for (int v = 1; v <= kSteps; ++v) {
    auto out = engine.Refresh(
        Request(root, static_cast<std::uint64_t>(v), tmp / ("v" + std::to_string(v))), nullptr,
        cancel);
    ASSERT_EQ(out.kind, workers::OutcomeKind::kApplied) << out.message;
  }
  EXPECT_GT(checks, 100u);
  EXPECT_TRUE(problems.empty()) << problems.size() << " broken states, first: " << problems[0];
}

}  // namespace
}  // namespace despool::enginetest
