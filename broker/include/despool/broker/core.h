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
#include <deque>
#include <map>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "despool/broker/interner.h"
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
  // > 0: deferred jobs due within this many ms are announced through TakeWarm() ahead of time,
  // so the broker can have their rows read on another thread first (a parked job is reloaded
  // from the store when it comes due; a cold page cache must not stall the loop then).
  std::int64_t warm_ahead_ms = 0;
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
  // The active jobs come in state.active_jobs, or one at a time through RecoverJob (streamed
  // by Store::Load(sink)) before Recover is given the rest of the state.
  void Recover(LoadedState state, std::int64_t now_ms);
  void RecoverJob(JobRecord job, std::int64_t now_ms);

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
  // Ids of parked jobs coming due within warm_ahead_ms (each announced once).
  std::vector<std::string> TakeWarm() { return std::exchange(warm_, {}); }
  // Progress events (never stored). State events travel in the WriteBatch: the loop publishes
  // them once the batch is committed.
  std::vector<msg::Event> TakeEvents();
  bool HasPendingOutput() const;

  // Read side, for the query handlers.
  std::vector<msg::WorkerInfo> Workers() const;
  std::size_t WorkerCount() const { return workers_.size(); }
  std::vector<std::string> KnownDps() const;
  bool DpOnline(const std::string& dp) const;
  std::uint64_t LastEventSeq() const { return last_event_seq_; }
  std::size_t ActiveJobs() const { return active_.size() + parked_.size(); }
  // Jobs per state (indexed by msg::JobState), terminal ones included: loaded once at start,
  // then kept current on every state change (stats answers from these, not a table scan).
  const std::array<std::uint64_t, kJobStateCount>& JobCounts() const { return counts_; }
  // Queued, running and deferred jobs of one DP (zeros when it has none).
  std::array<std::uint64_t, 3> ActiveCounts(const std::string& dp) const;

  // How late due retries became queued (ms after their due time), for benchmarks.
  struct LatenessHistogram {
    std::array<std::uint64_t, 1001> ms{};   // [0..1000] ms; the last bucket holds >= 1000
    std::uint64_t count = 0;
    std::int64_t max_ms = 0;                 // exact
    void Add(std::int64_t late_ms) {
      ++count;
      ++ms[static_cast<std::size_t>(std::clamp<std::int64_t>(late_ms, 0, 1000))];
      max_ms = std::max(max_ms, late_ms);
    }
    // The smallest lateness (ms) that `q` (0..1) of the samples do not exceed; 1000 stands for
    // "1000 or more", except for q = 1 (the exact maximum).
    std::int64_t Quantile(double q) const {
      if (q >= 1.0) return max_ms;
      std::uint64_t seen = 0;
      const auto want = static_cast<std::uint64_t>(q * static_cast<double>(count));
      for (std::size_t i = 0; i < ms.size(); ++i) {
        seen += ms[i];
        if (seen > want || (seen == count && seen > 0)) return static_cast<std::int64_t>(i);
      }
      return 0;
    }
  };
  // Due time -> queued (dispatchable) for every due retry.
  const LatenessHistogram& DueLateness() const { return lateness_; }
  // Due time -> dispatched to a worker (the dispatch leaves after its round's commit), for due
  // retries that found a worker with free credit; waiting for credit counts here, not above.
  const LatenessHistogram& DueDispatchLateness() const { return dispatch_lateness_; }
  // The earliest due time of a deferred job (may be stale: a rescheduled entry).
  std::optional<std::int64_t> NextDue() const;
  const JobRecord* FindActive(const std::string& id) const;

 private:
  struct Worker {
    std::string name;
    std::vector<std::string> dps;          // as registered
    // Sorted copy: a worker may serve thousands of DPs, and dispatch and stats ask per DP.
    std::vector<std::string> dps_sorted;
    bool Serves(const std::string& dp) const { return std::binary_search(dps_sorted.begin(), dps_sorted.end(), dp); }
    std::uint32_t capacity = 1;
    std::set<std::string> running;       // job ids
    std::int64_t connected_at_ms = 0;
    std::int64_t last_seen_ms = 0;
    std::int64_t last_sent_ms = 0;
    bool draining = false;                // said so in a heartbeat: dispatch nothing more
  };
  // Compact structures are keyed by the job's seq: its id is always "<store id>-<seq>".
  using JobSeq = std::uint64_t;
  // Jobs of one (DP, package): at most one running; pending = queued or deferred. Nearly every
  // lane holds a single pending job (a newer version supersedes older ones), kept inline.
  struct Lane {
    JobSeq running = 0;                  // 0 when free
    JobSeq first_pending = 0;            // 0 when none
    std::vector<JobSeq> more_pending;
    bool HasPending() const { return first_pending != 0; }
    std::vector<JobSeq> Pending() const;
    void AddPending(JobSeq seq);
    void ErasePending(JobSeq seq);
  };
  // (interned dp << 32) | interned package ("" = verify all); the lane holds one reference to
  // each name.
  using LaneKey = std::uint64_t;

  Lane* FindLane(const JobRecord& r);
  Lane& LaneFor(const JobRecord& r);       // creates it
  void DropLaneIfIdle(const JobRecord& r);
  std::string IdOf(JobSeq seq) const { return store_id_ + "-" + std::to_string(seq); }
  // The seq of one of our job ids; nullopt for anything else (unknown ids go to the store).
  std::optional<JobSeq> SeqOf(const std::string& id) const;

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
    std::uint64_t version = 0;           // superseding is decided without reloading the job
    std::uint64_t attempt_token = 0;
    std::uint32_t attempts = 0;
    std::uint32_t released_step = 0;
    msg::JobKind kind = msg::JobKind::kRefresh;
  };
  void Park(std::unordered_map<std::string, JobRecord>::iterator it);
  static Parked ParkedOf(const JobRecord& r);
  JobRecord* Active(const std::string& id);
  // Kind and version of a pending job, parked or not.
  std::optional<std::pair<msg::JobKind, std::uint64_t>> PendingVersion(JobSeq seq) const;
  // Per-state counters: moves r from the state it was counted in to its current one.
  void CountState(JobRecord& r);
  void CountDelta(const std::string& dp, msg::JobState state, int delta);
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
  std::unordered_map<JobSeq, Parked> parked_;          // deferred
  StringInterner names_;                               // lane keys' DPs and packages
  std::unordered_map<LaneKey, Lane> lanes_;
  std::array<std::uint64_t, kJobStateCount> counts_{};
  std::unordered_map<std::string, std::array<std::uint64_t, 3>> active_by_dp_;
  // dp -> queued jobs in the order they became queued.
  std::map<std::string, std::set<std::pair<std::uint64_t, std::string>>> ready_;
  std::unordered_map<std::string, std::uint64_t> ready_order_;
  std::uint64_t ready_counter_ = 0;
  std::string dispatch_cursor_;  // the DP served last (Dispatch's round-robin)
  bool dispatch_dirty_ = true;
  // Due retries: a min-heap of (due, seq), 16 bytes a job; entries that no longer match the
  // job (a hint rescheduled it, it moved on) are skipped when popped.
  std::priority_queue<std::pair<std::int64_t, JobSeq>, std::vector<std::pair<std::int64_t, JobSeq>>,
                      std::greater<>>
      due_;
  // Entries taken from due_ ahead of time (due within warm_ahead_ms), sorted by due; due
  // retries are taken from here and from due_, the earlier first.
  std::deque<std::pair<std::int64_t, JobSeq>> soon_;
  std::vector<std::string> warm_;
  std::unordered_map<std::string, std::string> running_peer_;  // job id -> worker peer
  std::map<std::string, std::int64_t> orphans_;                // running job id -> requeue at
  std::map<std::string, Worker> workers_;                      // by peer

  LatenessHistogram lateness_;
  LatenessHistogram dispatch_lateness_;
  const WriteBatch* in_flight_ = nullptr;
  WriteBatch batch_;
  std::vector<ToWorker> outbox_;
  std::vector<msg::Event> events_;
};

}  // namespace despool::broker
