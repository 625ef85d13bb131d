// Wake on release (issue 6 §4): after a deferral, watch what blocked the job and say when it is
// all gone, so the worker can send the broker a release hint (PROTOCOL.md 8.5).
//
// Signals used:
//  - inotify IN_CLOSE_WRITE | IN_CLOSE_NOWRITE (and IN_DELETE_SELF / IN_MOVE_SELF) on each
//    in-use file: a reader closing it;
//  - a pidfd (pidfd_open) per holding process the probe could name: its exit. This covers
//    mapped-only files and running executables, which produce no close event;
//  - a periodic re-probe when some in-use file has no named holder (no event can be expected),
//    plus a slow safety re-probe for every watched job (a close racing our own probe).
// Any signal schedules a re-probe of that job's paths with the in-use probe (the engine's auto
// probe); only a complete report with nothing in use counts as released.
//
// Bounded: at most max_watches inotify watches and max_pidfds pidfds over all jobs (a job that
// does not fit is not watched: the broker's timer still applies), each job is watched at most
// max_watch_time, and probing takes at most probe_budget_per_second of the caller's thread.
// Loop-thread only (not thread-safe).
#pragma once

#include <zmq.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "despool/common/result.h"
#include "despool/workers/inuse.h"

namespace despool::workers::service {

struct ReleaseWatcherOptions {
  std::size_t max_watches = 4096;
  std::size_t max_pidfds = 256;
  std::chrono::milliseconds reprobe_interval{1000};   // no holder known for some path
  std::chrono::milliseconds safety_interval{30000};   // every watched job
  std::chrono::milliseconds debounce{20};             // between two probes of one job
  std::chrono::milliseconds max_watch_time{std::chrono::hours(1)};
  // Probing runs on the caller's (event loop) thread: at most this much probe time per second
  // (a /proc scan on a busy host costs milliseconds); due probes beyond it wait.
  std::chrono::milliseconds probe_budget_per_second{100};
};

struct WatchRequest {
  std::string job_id;
  std::uint64_t attempt = 0;
  std::string base_dir;                 // absolute: the package dir (or the DP root)
  std::vector<std::string> paths;       // relative to base_dir
  std::vector<InUseHolder> holders;     // named by the probe; paths relative to base_dir
};

struct Released {
  std::string job_id;
  std::uint64_t attempt = 0;
};

class ReleaseWatcher {
 public:
  using Clock = std::chrono::steady_clock;

  ReleaseWatcher(ReleaseWatcherOptions options, std::unique_ptr<InUseProbe> probe);
  ~ReleaseWatcher();
  ReleaseWatcher(const ReleaseWatcher&) = delete;
  ReleaseWatcher& operator=(const ReleaseWatcher&) = delete;

  // inotify_init1. Without it (error) the watcher still works by periodic re-probing.
  Status Init();

  // Starts watching (replacing any watch of the same job). False when it does not fit the caps.
  bool Watch(const WatchRequest& request, Clock::time_point now);
  // Stops watching a job (any attempt) / every job.
  void Drop(const std::string& job_id);
  void Clear();
  bool Watching(const std::string& job_id) const { return jobs_.count(job_id) > 0; }
  std::size_t jobs() const { return jobs_.size(); }
  std::size_t inotify_watches() const { return wd_jobs_.size(); }
  std::size_t pidfds() const { return pidfd_count_; }

  // Adds the inotify fd and every pidfd to `items` (call before each poll).
  void AppendPollItems(std::vector<zmq_pollitem_t>& items);
  // Reads what became ready among the items appended last, then probes the jobs that are due.
  // Returns the jobs found released (they are no longer watched).
  std::vector<Released> Process(const std::vector<zmq_pollitem_t>& items, Clock::time_point now);
  // When Process next has something to do without an fd event.
  std::optional<Clock::time_point> NextDeadline() const;

  // Probe work for the heartbeat metrics.
  std::uint64_t probe_count() const { return probe_count_; }
  std::uint64_t probe_us_total() const { return probe_us_total_; }

 private:
  struct Job {
    std::uint64_t attempt = 0;
    std::string base_dir;
    std::vector<std::string> paths;
    std::set<int> wds;
    std::map<std::int64_t, int> pidfds;   // pid -> pidfd
    bool uncovered = true;                // some path has no named holder / watch
    Clock::time_point started;
    Clock::time_point next_probe;
    Clock::time_point last_probe;
    int quick_reprobes = 0;               // consecutive re-probes after a change, bounded
  };

  void AddWatches(const std::string& id, Job& job);
  // True when a holder watched so far is no longer among `holders` (it let go or exited).
  bool SetHolders(Job& job, const std::vector<InUseHolder>& holders);
  void ClosePidfds(Job& job);
  void RemoveWatches(const std::string& id, Job& job);
  void Trigger(const std::string& id, Clock::time_point now);
  void ReadInotify(Clock::time_point now, bool discard_closes);
  // True when released.
  bool Probe(const std::string& id, Job& job, Clock::time_point now);

  ReleaseWatcherOptions options_;
  std::unique_ptr<InUseProbe> probe_;
  int inotify_fd_ = -1;
  std::map<std::string, Job> jobs_;
  std::map<int, std::set<std::string>> wd_jobs_;   // inotify wd -> watching jobs
  std::size_t pidfd_count_ = 0;
  // The pollitems appended last: index of the inotify fd, and (index, job, pid) of pidfds.
  std::optional<std::size_t> inotify_index_;
  struct PidItem {
    std::size_t index;
    std::string job;
    std::int64_t pid;
  };
  std::vector<PidItem> pid_items_;
  std::uint64_t probe_count_ = 0;
  std::uint64_t probe_us_total_ = 0;
  Clock::time_point budget_window_{};
  Clock::duration budget_used_{};
  std::optional<Clock::time_point> throttled_until_;
};

}  // namespace despool::workers::service
