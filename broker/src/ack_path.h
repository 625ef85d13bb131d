// The threads every acknowledgement waits on: the event loop, the commit thread and ZeroMQ's
// I/O thread. Each asks the scheduler for short slices (see RequestSchedulerSlice): on a busy
// two-core machine a woken commit thread otherwise queued 1-2 ms behind other threads' slices,
// which set the submit->ack p99 (bench/README.md, "Half-rate latency": p99 1.43-1.78 ms with
// them, 1.71-5.42 ms without, alternated on the same quiet machine).
#pragma once

#include <chrono>

#include "despool/common/logging.h"
#include "despool/common/thread.h"

namespace despool::broker {

inline constexpr std::chrono::microseconds kAckPathSlice{100};

// Marks thread `tid` (0: the caller) as on the ack path; `what` names it in the log if refused.
inline void MarkAckPathThread(const char* what, pid_t tid = 0) {
  if (Status st = RequestSchedulerSlice(kAckPathSlice, tid); !st.ok()) {
    GetLogger("broker")->debug("no short scheduler slice thread={} error={}", what, LogQuote(st.error().message));
  }
}

}  // namespace despool::broker
