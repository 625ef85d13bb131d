// Per-thread scheduling settings: the slice request reaches the kernel, keeps the nice value,
// and threads are found by name.
#include "despool/common/thread.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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

// A thread that names itself, publishes its id and waits until destroyed.
class ParkedThread {
 public:
  explicit ParkedThread(const char* name = nullptr) {
    thread_ = std::thread([this, name] {
      if (name != nullptr) pthread_setname_np(pthread_self(), name);
      std::unique_lock<std::mutex> lock(mu_);
      tid_ = ::gettid();
      cv_.notify_all();
      cv_.wait(lock, [&] { return done_; });
    });
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return tid_ != 0; });
  }
  ~ParkedThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  pid_t tid() const { return tid_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  pid_t tid_ = 0;
  bool done_ = false;
  std::thread thread_;
};

TEST(SchedulerSlice, TheKernelRecordsTheRequestedSliceAndTheNiceValueStays) {
  if (!KernelKeepsSlices()) GTEST_SKIP() << "kernel before 6.12: slices are accepted and ignored";
  OnOwnThread([] {
    // Raising one's own nice value needs no privilege (lowering it would).
    errno = 0;
    const int nice = std::min(::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid())) + 1, 19);
    ASSERT_EQ(errno, 0);
    ASSERT_EQ(::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), nice), 0);
    ASSERT_TRUE(RequestSchedulerSlice(std::chrono::microseconds(300)).ok());
    const SchedAttr a = Get(0);
    EXPECT_EQ(a.sched_policy, static_cast<std::uint32_t>(SCHED_OTHER));
    EXPECT_EQ(a.sched_runtime, 300'000u);
    EXPECT_EQ(a.sched_nice, nice);
  });
}

TEST(SchedulerSlice, AnotherThreadOfTheProcessCanBeSet) {
  if (!KernelKeepsSlices()) GTEST_SKIP() << "kernel before 6.12: slices are accepted and ignored";
  ParkedThread t;
  EXPECT_TRUE(RequestSchedulerSlice(std::chrono::microseconds(200), t.tid()).ok());
  EXPECT_EQ(Get(t.tid()).sched_runtime, 200'000u);
}

// A background thread that a marked thread starts (the broker's checkpointer is started from the
// commit thread) must not inherit the short slice.
TEST(SchedulerSlice, ThreadsStartedLaterKeepTheDefaultSlice) {
  if (!KernelKeepsSlices()) GTEST_SKIP() << "kernel before 6.12: slices are accepted and ignored";
  const std::uint64_t default_slice = Get(0).sched_runtime;
  ASSERT_NE(default_slice, 100'000u);
  OnOwnThread([&] {
    ASSERT_TRUE(RequestSchedulerSlice(std::chrono::microseconds(100)).ok());
    ASSERT_EQ(Get(0).sched_runtime, 100'000u);
    ParkedThread child;
    EXPECT_EQ(Get(child.tid()).sched_runtime, default_slice);
  });
}

// The operator's choice of policy stands: a SCHED_BATCH thread keeps it (and gets the slice); a
// SCHED_IDLE one is left alone.
TEST(SchedulerSlice, ThePolicyStaysAndIdleThreadsAreLeftAlone) {
  if (!KernelKeepsSlices()) GTEST_SKIP() << "kernel before 6.12: slices are accepted and ignored";
  OnOwnThread([] {
    const sched_param none{};
    ASSERT_EQ(::sched_setscheduler(0, SCHED_BATCH, &none), 0);
    ASSERT_TRUE(RequestSchedulerSlice(std::chrono::microseconds(150)).ok());
    EXPECT_EQ(Get(0).sched_policy, static_cast<std::uint32_t>(SCHED_BATCH));
    EXPECT_EQ(Get(0).sched_runtime, 150'000u);
  });
  OnOwnThread([] {
    const sched_param none{};
    ASSERT_EQ(::sched_setscheduler(0, SCHED_IDLE, &none), 0);
    const std::uint64_t before = Get(0).sched_runtime;
    const Status st = RequestSchedulerSlice(std::chrono::microseconds(150));
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(st.error().code, ErrorCode::kFailedPrecondition);
    EXPECT_EQ(Get(0).sched_policy, static_cast<std::uint32_t>(SCHED_IDLE));
    EXPECT_EQ(Get(0).sched_runtime, before);
  });
}

TEST(SchedulerSlice, ANonexistentThreadIsRefused) {
  const Status st = RequestSchedulerSlice(std::chrono::microseconds(100), 0x3ffffff0);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("sched_getattr"), std::string::npos) << st.error().message;
}

TEST(ThreadsNamed, FindsThisProcessThreadsByNamePrefix) {
  ParkedThread t("despool-tn-1");
  EXPECT_EQ(ThreadsNamed("despool-tn-"), std::vector<pid_t>{t.tid()});
  EXPECT_TRUE(ThreadsNamed("despool-tn-2").empty());
}

}  // namespace
}  // namespace despool
