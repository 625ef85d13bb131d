// The broker's state machine: jobs, dispatch, delayed retries, worker registry. No sockets and
// no SQL: the loop feeds it decoded messages and the current time, then commits the WriteBatch
// it produced (one transaction per poll round) and only then sends what it queued for workers
// and publishes its events. Tests drive it directly with a fake clock.
//
// Rules (CONTRACT.md, ARCHITECTURE.md):
//  - one job per DP of an instruction; unknown DPs refuse the whole submit, naming them;
//  - per (DP, package) at most one job in flight; a newer version supersedes older queued or
//    deferred jobs and cancels an older running one (which ends superseded, or applied if its
//    switch already happened);
//  - a job goes to the least-loaded live worker serving its DP with free credit;
//  - every dispatch increments the job's attempt token; a result for another token is recorded
//    in the history but never moves the job;
//  - deferrals and retryable errors count an attempt and wait BackoffDelay(n); after
//    max_attempts the job ends dead, or gets one forced run (on_exhausted=force) whose failure
//    ends dead; permanent errors end dead at once;
//  - a worker missing `liveness` heartbeats is dropped and its running jobs are requeued
//    without counting an attempt.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "despool/broker/job_record.h"
#include "despool/broker/store.h"
#include "despool/messages/types.h"

namespace despool::broker {

struct CoreOptions {
  ResolvedPolicy default_policy;
  std::vector<std::string> dps;                                  // config [dps]
  std::map<std::string, std::vector<std::string>> dp_groups;    // config [dp_groups]
  std::int64_t heartbeat_interval_ms = 1000;
  std::uint32_t liveness = 3;                                    // missed heartbeats => lost
  // A job found running at start (or on a worker that re-registered) waits this long for its
  // worker's result before it is requeued. 0 = 2 x liveness x interval.
  std::int64_t orphan_grace_ms = 0;
  std::uint64_t rng_seed = 0;                                    // 0 = random
};

// A message for one worker, sent after the round's commit.
struct ToWorker {
  std::string peer;                                              // ROUTER routing id
  msg::Body body;
};

class Core {
 public:
  // store: read-only use for jobs no longer held in memory (retry/cancel of terminal jobs).
  Core(CoreOptions options, Store* store);

  // Rebuilds memory from the store: queues, lanes, due times; running jobs become orphans.
  void Recover(LoadedState state, std::int64_t now_ms);

  // Frontend mutations. Each returns the reply body (or an ErrorReply) to send after commit.
  msg::Body Submit(const msg::SubmitRequest& req, std::int64_t now_ms);
  msg::Body Retry(const msg::RetryRequest& req, std::int64_t now_ms);
  msg::Body Cancel(const msg::CancelRequest& req, std::int64_t now_ms);
  msg::Body Verify(const msg::VerifyRequest& req, std::int64_t now_ms);

  // Backend: any message from a worker's routing id.
  void OnWorkerMessage(const std::string& peer, msg::Body body, std::int64_t now_ms);

  // Timers (due retries, liveness, orphans, heartbeats) and dispatch. Call once per round.
  void Tick(std::int64_t now_ms);
  // The earliest time Tick has something to do (due retry, heartbeat, expiry).
  std::optional<std::int64_t> NextDeadline() const;

  // Stop dispatching (shutdown): queued jobs stay queued, nothing new goes out.
  void SetDraining(bool draining) { draining_ = draining; }

  WriteBatch TakeBatch();
  // The batch being committed (taken, not yet durable), or null: jobs that left memory in it are
  // looked up there before the store (retry/cancel/stale results).
  void SetInFlight(const WriteBatch* batch) { in_flight_ = batch; }
  std::vector<ToWorker> TakeWorkerOutbox();
  // Progress events (never stored). State events travel in the WriteBatch: the loop publishes
  // them once the batch is committed.
  std::vector<msg::Event> TakeEvents();
  bool HasPendingOutput() const;

  // Read side, for the query handlers.
  std::vector<msg::WorkerInfo> Workers() const;
  std::vector<std::string> KnownDps() const;
  bool DpOnline(const std::string& dp) const;
  std::uint64_t LastEventSeq() const { return last_event_seq_; }
  std::size_t ActiveJobs() const { return active_.size() + parked_.size(); }

  // How late due retries became queued (ms after their due time), for benchmarks.
  struct LatenessHistogram {
    std::array<std::uint64_t, 1001> ms{};   // [0..1000] ms; the last bucket holds >= 1000
    std::uint64_t count = 0;
    void Add(std::int64_t late_ms) {
      ++count;
      ++ms[static_cast<std::size_t>(std::clamp<std::int64_t>(late_ms, 0, 1000))];
    }
    // The smallest lateness (ms) that `q` (0..1) of the samples do not exceed.
    std::int64_t Quantile(double q) const {
      std::uint64_t seen = 0;
      const auto want = static_cast<std::uint64_t>(q * static_cast<double>(count));
      for (std::size_t i = 0; i < ms.size(); ++i) {
        seen += ms[i];
        if (seen > want || (seen == count && seen > 0)) return static_cast<std::int64_t>(i);
      }
      return 0;
    }
  };
  const LatenessHistogram& DueLateness() const { return lateness_; }
  const JobRecord* FindActive(const std::string& id) const;

 private:
  struct Worker {
    std::string name;
    std::vector<std::string> dps;
    std::uint32_t capacity = 1;
    std::set<std::string> running;       // job ids
    std::int64_t connected_at_ms = 0;
    std::int64_t last_seen_ms = 0;
    std::int64_t last_sent_ms = 0;
    bool draining = false;                // said so in a heartbeat: dispatch nothing more
  };
  // Jobs of one (DP, package): at most one running; pending = queued or deferred.
  struct Lane {
    std::string running;                 // job id, empty when free
    std::set<std::string> pending;
  };
  using LaneKey = std::pair<std::string, std::string>;   // (dp, package; "" = verify all)

  static LaneKey KeyOf(const JobRecord& r) { return {r.info.dp, r.info.package}; }

  bool IsKnownDp(const std::string& dp) const;
  void NoteDp(const std::string& dp);
  msg::ErrorReply Err(msg::ErrorKind kind, std::string message) const;

  std::string NewJobId();
  // Places a new (or retried) job: supersedes what it replaces, or ends superseded itself.
  void Admit(JobRecord job, std::int64_t now_ms);
  void Emit(JobRecord& r, std::int64_t now_ms);
  void Enqueue(JobRecord& r, std::int64_t now_ms);                 // -> queued, ready list
  // -> deferred; parks the job (r is no longer valid afterwards).
  void Defer(JobRecord& r, std::int64_t due_ms, std::int64_t now_ms);
  // Deferred jobs live in parked_ in a compact form; Active() brings one back (from the batch
  // or the store) when it has to move.
  struct Parked {
    std::int64_t due_ms = 0;
    std::uint64_t attempt_token = 0;
    std::uint32_t attempts = 0;
    std::uint32_t released_step = 0;
  };
  void Park(std::unordered_map<std::string, JobRecord>::iterator it);
  JobRecord* Active(const std::string& id);
  void Finish(const std::string& id, msg::JobState state, std::int64_t now_ms);
  void Unready(const std::string& id);
  void ReleaseRunning(JobRecord& r);                                // from lane and worker
  void RequeueLost(const std::string& id, const std::string& why, std::int64_t now_ms);
  void HandleResult(const std::string& peer, const msg::JobResult& res, std::int64_t now_ms);
  void HandleFailure(JobRecord& r, const msg::JobResult& res, std::int64_t now_ms);
  void LoseWorker(const std::string& peer, const std::string& why, std::int64_t now_ms);
  void SendToWorker(const std::string& peer, msg::Body body);
  void SendCancel(JobRecord& r);
  void Dispatch(std::int64_t now_ms);
  // Dispatches one ready job of `dp` to its least-loaded eligible worker; false when none can go.
  bool DispatchOne(const std::string& dp, std::set<std::pair<std::uint64_t, std::string>>& queue,
                   std::int64_t now_ms);
  std::optional<JobRecord> LookupInactive(const std::string& id);
  msg::JobInfo PublicInfo(const JobRecord& r) const { return r.info; }

  CoreOptions opts_;
  Store* store_;
  std::mt19937_64 rng_;
  bool draining_ = false;
  std::int64_t last_now_ms_ = 0;                       // the latest time given to the Core

  std::string store_id_ = "j";
  std::uint64_t next_job_seq_ = 1;
  std::uint64_t last_event_seq_ = 0;
  std::vector<std::string> known_dps_;                // order of first sight
  std::set<std::string> known_dp_set_;

  std::unordered_map<std::string, JobRecord> active_;  // queued, running, (unparked) deferred
  std::unordered_map<std::string, Parked> parked_;     // deferred
  std::map<LaneKey, Lane> lanes_;
  // dp -> queued jobs in the order they became queued.
  std::map<std::string, std::set<std::pair<std::uint64_t, std::string>>> ready_;
  std::unordered_map<std::string, std::uint64_t> ready_order_;
  std::uint64_t ready_counter_ = 0;
  std::string dispatch_cursor_;  // the DP served last (Dispatch's round-robin)
  bool dispatch_dirty_ = true;
  // Due retries: (due, job id); entries that no longer match the job are skipped when popped.
  std::priority_queue<std::pair<std::int64_t, std::string>,
                      std::vector<std::pair<std::int64_t, std::string>>, std::greater<>>
      due_;
  std::unordered_map<std::string, std::string> running_peer_;  // job id -> worker peer
  std::map<std::string, std::int64_t> orphans_;                // running job id -> requeue at
  std::map<std::string, Worker> workers_;                      // by peer

  LatenessHistogram lateness_;
  const WriteBatch* in_flight_ = nullptr;
  WriteBatch batch_;
  std::vector<ToWorker> outbox_;
  std::vector<msg::Event> events_;
};

}  // namespace despool::broker
