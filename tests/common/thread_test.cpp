// Per-thread scheduling settings: the slice request reaches the kernel, keeps the nice value,
// and threads are found by name.
#include "despool/common/thread.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace despool {
namespace {

struct SchedAttr {  // <linux/sched/types.h>
  std::uint32_t size;
  std::uint32_t sched_policy;
  std::uint64_t sched_flags;
  std::int32_t sched_nice;
  std::uint32_t sched_priority;
  std::uint64_t sched_runtime;
  std::uint64_t sched_deadline;
  std::uint64_t sched_period;
  std::uint32_t sched_util_min;
  std::uint32_t sched_util_max;
};

SchedAttr Get(pid_t tid) {
  SchedAttr a{};
  EXPECT_EQ(::syscall(SYS_sched_getattr, tid, &a, sizeof a, 0), 0) << errno;
  return a;
}

// Custom slices for SCHED_OTHER arrived with EEVDF in Linux 6.12.
bool KernelKeepsSlices() {
  utsname u{};
  if (::uname(&u) != 0) return false;
  int major = 0, minor = 0;
  if (std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major > 6 || (major == 6 && minor >= 12);
}

// Runs `body` on a fresh thread (the settings under test are per thread) and joins it.
template <typename F>
void OnOwnThread(F body) {
  std::thread t(body);
  t.join();
}

TEST(SchedulerSlice, TheKernelRecordsTheRequestedSliceAndTheNiceValueStays) {
  if (!KernelKeepsSlices()) GTEST_SKIP() << "kernel before 6.12: slices are accepted and ignored";
  OnOwnThread([] {
    ASSERT_EQ(::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 3), 0);
    ASSERT_TRUE(RequestSchedulerSlice(std::chrono::microseconds(300)));
    const SchedAttr a = Get(0);
    EXPECT_EQ(a.sched_policy, static_cast<std::uint32_t>(SCHED_OTHER));
    EXPECT_EQ(a.sched_runtime, 300'000u);
    EXPECT_EQ(a.sched_nice, 3);
  });
}

TEST(SchedulerSlice, AnotherThreadOfTheProcessCanBeSet) {
  if (!KernelKeepsSlices()) GTEST_SKIP() << "kernel before 6.12: slices are accepted and ignored";
  std::mutex mu;
  std::condition_variable cv;
  pid_t tid = 0;
  bool done = false;
  std::thread t([&] {
    std::unique_lock<std::mutex> lock(mu);
    tid = ::gettid();
    cv.notify_all();
    cv.wait(lock, [&] { return done; });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return tid != 0; });
  }
  EXPECT_TRUE(RequestSchedulerSlice(std::chrono::microseconds(200), tid));
  EXPECT_EQ(Get(tid).sched_runtime, 200'000u);
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  t.join();
}

TEST(SchedulerSlice, ANonexistentThreadIsRefused) {
  EXPECT_FALSE(RequestSchedulerSlice(std::chrono::microseconds(100), 0x3ffffff0));
}

TEST(ThreadsNamed, FindsThisProcessThreadsByNamePrefix) {
  std::mutex mu;
  std::condition_variable cv;
  pid_t tid = 0;
  bool done = false;
  std::thread t([&] {
    pthread_setname_np(pthread_self(), "despool-tn-1");
    std::unique_lock<std::mutex> lock(mu);
    tid = ::gettid();
    cv.notify_all();
    cv.wait(lock, [&] { return done; });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return tid != 0; });
  }
  const auto found = ThreadsNamed("despool-tn-");
  EXPECT_EQ(found, std::vector<pid_t>{tid});
  EXPECT_TRUE(ThreadsNamed("despool-tn-2").empty());
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  t.join();
  EXPECT_TRUE(ThreadsNamed("despool-tn-").empty());
}

}  // namespace
}  // namespace despool
