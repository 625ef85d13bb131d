// The worker service behind despool-worker (issue 6): one event-loop thread owns the DEALER
// connected to the broker's backend (PROTOCOL.md 8), a pool of `concurrency` threads runs the
// refresh engine, and a release watcher turns released files into release hints.
//
// Threads and ownership:
//  - the loop thread (Run's caller) owns the socket, the job table, the unacknowledged results
//    and the release watcher; nothing else touches them;
//  - pool threads run one job at a time (executor.h) and hand progress and results back through
//    a mutex-protected queue plus an eventfd the loop polls (no socket is shared).
//
// Rules kept here:
//  - never two jobs of one (DP, package) at once: a dispatch for a busy lane waits locally;
//  - a result is kept until the broker's result-ack for its (job id, attempt), resent every
//    heartbeat interval and after every registration;
//  - the broker is presumed dead after `liveness` heartbeat intervals of silence: the socket is
//    closed and a new one connects after a backoff doubling from reconnect_min to
//    reconnect_max, then registers again. Jobs keep running meanwhile;
//  - stop (stop_fd readable, e.g. a signalfd for SIGTERM): dispatches received from then on are
//    held unanswered (they keep the broker from sending more and are requeued by the final
//    disconnect), running jobs get drain_timeout to finish and are then cancelled (live trees
//    untouched), results are flushed (bounded by result_flush_timeout), then `disconnect` is
//    sent and Run returns. A second stop signal cancels running jobs at once.
#pragma once

#include <memory>

#include "despool/common/result.h"
#include "despool/workers/engine.h"
#include "despool/workers/service/settings.h"

namespace despool::workers::service {

class Worker {
 public:
  // settings.dps must have passed CheckDps (absolute roots). `engine` must outlive the worker.
  Worker(WorkerSettings settings, Engine& engine);
  ~Worker();
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs until stop_fd is readable and the drain is done. Errors only when the loop cannot run
  // at all (bad endpoint, no eventfd).
  Status Run(int stop_fd);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace despool::workers::service
