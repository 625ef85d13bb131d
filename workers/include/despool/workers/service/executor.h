// Running one dispatched job with the refresh engine and turning its outcome into the
// protocol's JobResult (PROTOCOL.md 7.4). Pure functions of the engine: no sockets, no threads;
// the worker's pool threads call RunJob.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "despool/messages/types.h"
#include "despool/workers/engine.h"

namespace despool::workers::service {

// Caps on what one result carries, so it stays well under the application frame limit.
inline constexpr std::size_t kMaxResultPaths = 1000;

struct JobContext {
  std::string dp_root;                          // absolute
  std::shared_ptr<RateLimiter> rate_limiter;    // shared by the worker; may be null
  std::chrono::milliseconds lock_wait{5000};
};

// What a job did, for the worker's heartbeat metrics and its release watching.
struct JobEffects {
  bool refreshed = false;                       // a refresh or repair ran (not a pure verify)
  std::uint64_t refresh_ms = 0;
  std::uint64_t bytes_copied = 0;
  std::uint64_t bytes_linked = 0;
  std::uint64_t inuse_checks = 0;
  std::uint64_t inuse_check_us = 0;
  // Deferred: every in-use path and holder (not capped; paths relative to the package dir,
  // or to the DP root for a verify over every package), for the release watcher.
  std::vector<std::string> in_use_all;
  std::vector<InUseHolder> holders_all;
};

using JobProgressFn = std::function<void(const msg::Progress&)>;

// Runs a refresh (Engine::Refresh) or a verify (Engine::Verify, with repair Engine::Repair) and
// returns its result (job_id and attempt filled from `dispatch`). Never throws.
msg::JobResult RunJob(Engine& engine, const msg::Dispatch& dispatch, const JobContext& context,
                      const JobProgressFn& progress, const CancelToken& cancel, JobEffects* effects);

// The mapping of a refresh (or repair) outcome, exposed for tests.
msg::JobResult ResultFromOutcome(const msg::Dispatch& dispatch, const RefreshOutcome& outcome,
                                 JobEffects* effects);

// The installed packages of a DP (ROOT/.despool/state/<package>.manifest), sorted.
Result<std::vector<std::string>> InstalledPackages(const std::string& dp_root);

}  // namespace despool::workers::service
