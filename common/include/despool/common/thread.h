// Per-thread scheduling settings, for the few threads that acknowledgements wait on.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string_view>
#include <vector>

#include "despool/common/result.h"

namespace despool {

// Asks the kernel to run thread `tid` (0: the calling thread) in slices of about `slice`.
//
// Why: with the EEVDF scheduler (Linux 6.12 and later) a thread that asks for a short slice gets
// an early virtual deadline, so when it wakes while both cores are busy it runs within about
// that slice instead of queueing behind a running thread's default slice (~3 ms). It gets no
// more CPU in total, only sooner and in smaller pieces. No privilege is needed; the kernel
// clamps the value to 0.1-100 ms; older kernels accept it and keep their own policy.
// Only the slice changes: the policy and nice value stay, and a thread running under a policy
// other than SCHED_OTHER or SCHED_BATCH (idle, real-time) is left alone (kFailedPrecondition).
// Threads the marked one starts later do not inherit the slice (SCHED_FLAG_RESET_ON_FORK).
Status RequestSchedulerSlice(std::chrono::microseconds slice, pid_t tid = 0);

// The ids of this process's threads whose name (as `top -H` shows it) starts with `prefix`.
std::vector<pid_t> ThreadsNamed(std::string_view prefix);

}  // namespace despool
