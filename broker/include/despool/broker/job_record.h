// A job as the broker keeps it: what clients see (msg::JobInfo) plus the bookkeeping the state
// machine needs to survive a restart (resolved retry policy, attempt token, pending cancel...).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "despool/messages/types.h"

namespace despool::broker {

// A retry policy with every default filled in (CONTRACT.md: base 30 s, max 1 h, 10 attempts, dead).
struct ResolvedPolicy {
  std::uint64_t retry_base_ms = 30'000;
  std::uint64_t retry_max_ms = 3'600'000;
  std::uint32_t max_attempts = 10;
  msg::OnExhausted on_exhausted = msg::OnExhausted::kDead;
};

// Why a cancel was sent to the worker running a job; decides the state the job ends in.
enum class CancelReason : std::uint8_t { kNone = 0, kSuperseded = 1, kOperator = 2 };

struct JobRecord {
  msg::JobInfo info;
  std::uint64_t seq = 0;               // creation order, never reused (the id is derived from it)
  ResolvedPolicy policy;
  bool repair = false;                 // verify
  bool checksum = false;               // refresh
  std::uint64_t attempt_token = 0;     // incremented on every dispatch
  bool force_next = false;             // attempts exhausted with on_exhausted=force: one forced run
  bool forced_running = false;         // the current run is the forced one
  CancelReason cancel_reason = CancelReason::kNone;
  std::uint32_t released_step = 0;     // the deferral step a release hint already shortened
  std::int64_t started_at_ms = 0;      // of the current run (running jobs)

  // In memory only (never stored): the state the Core's per-state counters hold this job in
  // (none for a job not yet counted), and when a due retry made it queued (for the lateness
  // histogram of due -> dispatched; 0 otherwise).
  std::optional<msg::JobState> counted_state;
  std::int64_t came_due_ms = 0;
};

// One finished (or abandoned) run of a job, kept for inspection.
struct AttemptRecord {
  std::string job_id;
  std::uint64_t attempt = 0;           // the attempt token of the run
  std::string worker;
  std::int64_t started_at_ms = 0;
  std::int64_t ended_at_ms = 0;
  std::string outcome;                 // msg::Outcome names, plus "lost", "stale:<outcome>"
  std::optional<std::string> error;
  std::vector<std::string> in_use;
};

}  // namespace despool::broker
