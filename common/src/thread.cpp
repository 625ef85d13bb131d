#include "despool/common/thread.h"

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

namespace despool {
namespace {

// struct sched_attr from <linux/sched/types.h>; glibc 2.36 wraps neither sched_setattr nor
// sched_getattr.
struct SchedAttr {
  std::uint32_t size;
  std::uint32_t sched_policy;
  std::uint64_t sched_flags;
  std::int32_t sched_nice;
  std::uint32_t sched_priority;
  std::uint64_t sched_runtime;  // SCHED_OTHER/SCHED_BATCH: the requested slice (Linux >= 6.12)
  std::uint64_t sched_deadline;
  std::uint64_t sched_period;
  std::uint32_t sched_util_min;
  std::uint32_t sched_util_max;
};

constexpr std::uint64_t kResetOnFork = 0x01;  // SCHED_FLAG_RESET_ON_FORK

}  // namespace

Status RequestSchedulerSlice(std::chrono::microseconds slice, pid_t tid) {
  SchedAttr attr{};
  if (::syscall(SYS_sched_getattr, tid, &attr, sizeof attr, 0) != 0) {
    return SysError("sched_getattr of thread " + std::to_string(tid), errno);
  }
  if (attr.sched_policy != SCHED_OTHER && attr.sched_policy != SCHED_BATCH) {
    return MakeError(ErrorCode::kFailedPrecondition,
                     "thread " + std::to_string(tid) + " runs under scheduling policy " +
                         std::to_string(attr.sched_policy) + ": left as it is");
  }
  attr.size = sizeof attr;
  attr.sched_flags = kResetOnFork;  // a thread it starts later gets the default slice
  attr.sched_runtime = static_cast<std::uint64_t>(std::chrono::nanoseconds(slice).count());
  if (::syscall(SYS_sched_setattr, tid, &attr, 0) != 0) {
    return SysError("sched_setattr of thread " + std::to_string(tid), errno);
  }
  return Status::Ok();
}

std::vector<pid_t> ThreadsNamed(std::string_view prefix) {
  namespace fs = std::filesystem;
  std::vector<pid_t> out;
  std::error_code ec;
  for (fs::directory_iterator it("/proc/self/task", ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    std::ifstream comm(it->path() / "comm");
    std::string name;
    if (!std::getline(comm, name) || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string id = it->path().filename().string();
    pid_t tid = 0;
    for (char c : id) tid = static_cast<pid_t>(tid * 10 + (c - '0'));
    out.push_back(tid);
  }
  return out;
}

}  // namespace despool
