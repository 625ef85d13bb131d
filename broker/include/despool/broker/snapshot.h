// What the event loop knows that the store does not (live workers, which DPs are online, loop
// counters), published as an immutable value a few times a second so HTTP threads never touch
// the Core or the loop's sockets.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "despool/messages/types.h"

namespace despool::broker {

struct WorkerSnapshot {
  msg::WorkerInfo info;
  std::optional<msg::WorkerMetrics> metrics;   // from its latest heartbeat that carried them
};

struct Snapshot {
  std::int64_t taken_at_ms = 0;
  std::vector<WorkerSnapshot> workers;
  std::uint64_t active_jobs = 0;               // queued + running + deferred held by the Core
  // The `stats` answer as the Core keeps it (CoreStats: counts by state, known DPs in first-seen
  // order with their online flag and active counts, last event seq), so HTTP readers never count
  // the jobs table (a scan of a million rows per scrape). oldest_queued_at_ms is left empty:
  // readers look it up in the store (an index lookup).
  msg::StatsReply stats;
  // Due retries: how late (after their due time) deferred jobs became queued, cumulative counts
  // per bound in seconds (the Core keeps a millisecond histogram; values >= 1 s land in +Inf).
  std::vector<double> lateness_bounds;
  std::vector<std::uint64_t> lateness_cumulative;  // per bound, then +Inf
  std::uint64_t lateness_count = 0;
  double lateness_sum_seconds = 0;             // from millisecond buckets (>= 1 s counted as 1 s)
  std::uint64_t loop_rounds = 0;
  std::uint64_t loop_messages = 0;
  std::uint64_t commits = 0;
};

// The latest Snapshot, swapped under a mutex held only for the pointer copy.
class SnapshotBox {
 public:
  SnapshotBox() : current_(std::make_shared<const Snapshot>()) {}
  void Publish(std::shared_ptr<const Snapshot> s) {
    std::lock_guard lock(mu_);
    current_ = std::move(s);
  }
  std::shared_ptr<const Snapshot> Get() const {
    std::lock_guard lock(mu_);
    return current_;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const Snapshot> current_;
};

}  // namespace despool::broker
