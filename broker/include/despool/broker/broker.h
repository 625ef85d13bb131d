// The broker process: one thread, one event loop owning the frontend ROUTER, the backend
// ROUTER and the events PUB socket (PROTOCOL.md section 2).
//
// Each poll round: read every message available (up to a cap) from both ROUTERs, feed them to
// the Core, run its timers, then commit everything changed since the last commit in ONE
// transaction (group commit), and only once it is durable send the replies, dispatches, result
// acks and events it covers. Read-only requests are answered after that commit, so they see
// their round's changes. With a reader connection the commit runs on its own thread while the
// loop goes on with the next rounds (whose changes form the next transaction).
#pragma once

#include <zmq.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "despool/broker/core.h"
#include "despool/broker/settings.h"
#include "despool/broker/store.h"
#include "despool/common/result.h"

namespace despool::broker {

struct BoundEndpoints {
  std::string frontend;
  std::string backend;
  std::string events;
  std::string http;  // "http://HOST:PORT" when the HTTP endpoint is on, else empty
};

// Where the loop's time goes (for benchmarks and logs). Nanoseconds of steady clock.
struct LoopMetrics {
  std::uint64_t rounds = 0;          // poll rounds that handled at least one message or timer
  std::uint64_t messages = 0;        // messages read from both ROUTERs
  std::uint64_t commits = 0;         // non-empty transactions
  std::uint64_t committed_jobs = 0;  // job rows written (after coalescing within a round)
  std::uint64_t max_round_messages = 0;
  std::uint64_t read_ns = 0;         // recv + decode + Core handling
  std::uint64_t tick_ns = 0;         // timers + dispatch
  std::uint64_t commit_ns = 0;       // store transaction incl. fsync (wall clock)
  std::uint64_t commit_cpu_ns = 0;   // the loop thread's CPU time inside those transactions
  std::uint64_t send_ns = 0;         // encode + send replies, dispatches, events
  std::uint64_t poll_ns = 0;         // waiting in zmq_poll
  std::uint64_t loop_cpu_ns = 0;     // CPU time of the loop thread during Run
  // Quantiles (µs, 10 µs resolution) of each commit's wall time (incl. fsync) and of a submit's
  // time inside the broker (read -> ack handed to ZeroMQ).
  std::uint64_t commit_p50_us = 0, commit_p99_us = 0, commit_max_us = 0;
  std::uint64_t submit_ack_p50_us = 0, submit_ack_p99_us = 0, submit_ack_max_us = 0;
  bool commit_thread = false;        // commit_cpu_ns was spent on the commit thread
  std::uint64_t active_jobs = 0;     // queued + running + deferred held in memory
  std::uint64_t due_retries = 0;     // deferred jobs that came due
  std::int64_t due_lateness_p50_ms = 0;   // due time -> queued (dispatchable)
  std::int64_t due_lateness_p99_ms = 0;
  std::int64_t due_lateness_max_ms = 0;
  std::uint64_t due_dispatched = 0;  // of those, dispatched (to a worker with free credit)
  std::int64_t due_dispatch_p50_ms = 0;   // due time -> dispatched (sent after its commit)
  std::int64_t due_dispatch_p99_ms = 0;
  std::int64_t due_dispatch_max_ms = 0;
};

class Broker {
 public:
  // reader: an optional second connection to the same store. With it, commits run on their own
  // thread (pipelined: the loop processes the next round while a transaction fsyncs) and reads
  // use the reader; without it, every round commits inline.
  Broker(BrokerSettings settings, std::unique_ptr<Store> store, std::unique_ptr<Store> reader = nullptr);
  ~Broker();
  Broker(const Broker&) = delete;
  Broker& operator=(const Broker&) = delete;

  // Loads the store into the Core and binds the sockets (endpoints may use port '*').
  Status Start();
  const BoundEndpoints& endpoints() const { return endpoints_; }

  // Runs until `stop_fd` (a signalfd, a pipe) becomes readable, or a fatal store error.
  // On stop: nothing new is dispatched, the current round is committed, sockets close.
  Status Run(int stop_fd);

  // Safe to read only after Run returned (or from the loop's thread).
  LoopMetrics metrics() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
  BoundEndpoints endpoints_;
};

}  // namespace despool::broker
