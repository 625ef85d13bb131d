// The broker's durable store, behind a small interface so the dispatch and scheduling logic
// never sees SQL. SQLite (sqlite_store.h) is the embedded default; a shared PostgreSQL backend
// can implement the same interface.
//
// Contract: Commit applies a whole WriteBatch atomically and durably (per the configured sync
// mode) or not at all. Reads see every committed batch.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "despool/broker/job_record.h"
#include "despool/common/result.h"
#include "despool/messages/types.h"

namespace despool::broker {

// Everything one poll round changed, committed in one transaction (group commit).
struct WriteBatch {
  std::map<std::string, JobRecord> jobs;       // upserts, last version of each job wins
  std::vector<AttemptRecord> attempts;
  std::vector<std::string> new_dps;            // DPs seen for the first time (from workers)
  std::vector<msg::Event> events;              // state events, seq assigned by the caller
  // Optional: msg::Encode of each event's envelope, index-aligned with `events`, so the loop
  // encodes once for the store and the PUB socket. Empty: the store encodes.
  std::vector<std::string> encoded_events;
  std::optional<std::uint64_t> next_job_seq;   // id generator high-water mark

  bool empty() const {
    return jobs.empty() && attempts.empty() && new_dps.empty() && events.empty() &&
           !next_job_seq;
  }
};

constexpr std::size_t kJobStateCount = static_cast<std::size_t>(msg::JobState::kDead) + 1;

// What the broker needs at start to rebuild its in-memory state.
struct LoadedState {
  std::string store_id;                        // random, fixed at creation; prefixes job ids
  std::uint64_t next_job_seq = 1;
  std::uint64_t last_event_seq = 0;
  std::vector<std::string> dps;                // DPs seen (workers), in first-seen order
  std::vector<JobRecord> active_jobs;          // queued, running, deferred (Load() only)
  // Jobs per state (indexed by msg::JobState), terminal ones included; the Core keeps these
  // counts current from here on, so `stats` never scans the jobs table.
  std::array<std::uint64_t, kJobStateCount> jobs_by_state{};
};

// Receives the active jobs one row at a time while the store loads.
using ActiveJobSink = std::function<void(JobRecord&&)>;

struct JobFilter {
  std::optional<std::string> package;
  std::optional<std::string> dp;
  std::optional<msg::JobState> state;
  std::uint32_t limit = 1000;                  // 0 = all
};

struct EventsPage {
  std::vector<msg::Event> events;
  std::uint64_t oldest_seq = 0;                // oldest retained (0 when none)
  std::uint64_t last_seq = 0;
};

struct StoreCounts {
  std::map<msg::JobState, std::uint64_t> by_state;
  std::optional<std::int64_t> oldest_queued_at_ms;
  // dp -> (queued, running, deferred)
  std::map<std::string, std::array<std::uint64_t, 3>> active_by_dp;
};

class Store {
 public:
  virtual ~Store() = default;

  // Everything, active jobs materialised in full in LoadedState::active_jobs (tests, tools).
  virtual Result<LoadedState> Load() = 0;
  // The same, streaming the active jobs to `sink` instead (active_jobs stays empty), so a
  // million deferred jobs are never held twice. Deferred jobs come light: without in_use,
  // holders, last_error, report and stats, which the Core does not keep for parked jobs (it
  // reads the full row with GetJob when the job moves). Queued and running jobs come in full.
  virtual Result<LoadedState> Load(const ActiveJobSink& sink) = 0;
  virtual Status Commit(const WriteBatch& batch) = 0;

  virtual Result<std::optional<JobRecord>> GetJob(const std::string& id) = 0;
  // Non-terminal jobs and then the most recently updated terminal ones, matching the filter.
  virtual Result<std::vector<JobRecord>> ListJobs(const JobFilter& filter) = 0;
  virtual Result<std::vector<AttemptRecord>> History(const std::string& job_id) = 0;
  virtual Result<EventsPage> EventsSince(std::uint64_t since, std::uint32_t limit,
                                         const std::optional<std::string>& dp,
                                         const std::optional<std::string>& package) = 0;
  virtual Result<StoreCounts> Counts() = 0;
  // When the oldest queued job became queued (an index lookup, not a scan).
  virtual Result<std::optional<std::int64_t>> OldestQueuedAt() = 0;
  // "name = value" lines describing the durability settings in force (for logs and benchmarks).
  virtual std::vector<std::string> Describe() = 0;
  // "name = value" lines about the write path's work so far (WAL size, checkpoints), for logs and
  // benchmarks. Call it from the thread that commits, or once commits have stopped.
  virtual std::vector<std::string> Activity() { return {}; }
};

enum class SyncMode { kFull, kNormal };

struct SqliteOptions {
  SyncMode sync = SyncMode::kFull;             // FULL: fsync on every commit (power-loss safe)
  std::uint64_t events_retention = 100'000;    // state events kept
  int busy_timeout_ms = 5000;
  std::int64_t cache_kib = 32768;              // SQLite page cache per connection
  // WAL checkpoints run on their own thread and connection once the WAL holds this many pages,
  // never inside a commit (0: SQLite's automatic checkpoint inside the commit, at 1000 pages).
  int wal_checkpoint_pages = 1000;
  // The WAL starts over only when a pass ends between two transactions; a writer committing back
  // to back may never give it that moment. Past this many pages the writer checkpoints itself
  // after a commit while no pass runs; past twice this it waits for the pass: the WAL stays
  // bounded (unless a reader holds an old snapshot for that long: no mode can restart then).
  int wal_max_pages = 8000;
};

// Opens (creating and migrating as needed) the SQLite store at path; ":memory:" for tests.
Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path, const SqliteOptions& opts);

}  // namespace despool::broker
