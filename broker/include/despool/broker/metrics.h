// The broker's Prometheus metrics (docs/observability.md lists every name).
//
// Threads: the event loop records (Observe/Inc: relaxed atomics, no locks); HTTP threads read
// at scrape time. A scrape may see one instrument a few increments ahead of another, never a
// torn value. Gauges that describe the queue are not kept here: they come from the store and
// the loop's Snapshot when /metrics is rendered.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "despool/broker/snapshot.h"
#include "despool/broker/store.h"
#include "despool/messages/types.h"

namespace despool::broker {

// A fixed-bucket histogram. Observe is wait-free; Read gives cumulative counts per bound.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double value);

  struct Data {
    std::vector<double> bounds;            // le values, ascending (+Inf implied)
    std::vector<std::uint64_t> cumulative; // one per bound, then +Inf (== count)
    std::uint64_t count = 0;
    double sum = 0;
  };
  Data Read() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // bounds_.size() + 1 (+Inf)
  std::atomic<double> sum_{0};
};

inline constexpr std::size_t kJobStates = 8;   // msg::JobState values
inline constexpr std::size_t kOutcomes = 7;    // msg::Outcome values
inline constexpr std::size_t kJobKinds = 2;    // msg::JobKind values
inline constexpr std::size_t kEventKinds = 2;  // msg::EventKind values

// Counters and histograms the loop records. Every member is safe to read from any thread.
struct BrokerMetrics {
  BrokerMetrics();

  Histogram submit_ack_seconds;      // submit received -> ack sent (after the durable commit)
  Histogram commit_seconds;          // one store transaction incl. fsync
  Histogram commit_batch_jobs;       // job rows per transaction
  std::array<std::atomic<std::uint64_t>, kJobKinds> dispatches{};      // by kind
  std::array<std::atomic<std::uint64_t>, kOutcomes> results{};         // by outcome, as received
  std::array<std::atomic<std::uint64_t>, kJobStates> transitions{};    // committed, by new state
  std::array<std::atomic<std::uint64_t>, kEventKinds> events_published{};
  std::atomic<std::uint64_t> events_dropped{0};                        // send failed
  std::atomic<std::uint64_t> http_requests{0};
};

// The Prometheus text exposition format (version 0.0.4) of everything the broker exports:
// `stats`: the loop's counts (the snapshot's), with the oldest queued job's time read from the
// store when `store_up`; when the store could not be read, despool_store_up is 0 and the
// oldest-queued age is left out. The rest comes from `metrics` and the loop's `snapshot`.
std::string RenderMetrics(const BrokerMetrics& metrics, const Snapshot& snapshot, const msg::StatsReply& stats,
                          bool store_up, std::int64_t now_ms);

// Label value escaping per the exposition format (backslash, double quote, newline).
std::string EscapeLabelValue(std::string_view value);

}  // namespace despool::broker
