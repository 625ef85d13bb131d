#include "despool/common/thread.h"

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace despool {
namespace {

// struct sched_attr from <linux/sched/types.h>; glibc 2.36 has no wrapper for sched_setattr.
struct SchedAttr {
  std::uint32_t size;
  std::uint32_t sched_policy;
  std::uint64_t sched_flags;
  std::int32_t sched_nice;
  std::uint32_t sched_priority;
  std::uint64_t sched_runtime;  // SCHED_OTHER: the requested slice (Linux >= 6.12)
  std::uint64_t sched_deadline;
  std::uint64_t sched_period;
  std::uint32_t sched_util_min;
  std::uint32_t sched_util_max;
};

}  // namespace

bool RequestSchedulerSlice(std::chrono::microseconds slice, pid_t tid) {
  SchedAttr attr{};
  attr.size = sizeof attr;
  attr.sched_policy = SCHED_OTHER;
  // Keep the thread's nice value: sched_setattr sets it along with the rest.
  errno = 0;
  attr.sched_nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(tid == 0 ? ::gettid() : tid));
  if (errno != 0) return false;
  attr.sched_runtime = static_cast<std::uint64_t>(std::chrono::nanoseconds(slice).count());
  return ::syscall(SYS_sched_setattr, tid, &attr, 0) == 0;
}

std::vector<pid_t> ThreadsNamed(std::string_view prefix) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    if (!std::getline(comm, name) || name.compare(0, prefix.size(), prefix) != 0) continue;
    try {
      out.push_back(static_cast<pid_t>(std::stol(task.path().filename().string())));
    } catch (const std::exception&) {
      // not a thread id; /proc/self/task holds nothing else
    }
  }
  return out;
}

}  // namespace despool
