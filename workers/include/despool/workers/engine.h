// The refresh engine: brings ROOT/<package>/ on one DP to a version from a source directory,
// safely (CONTRACT.md, "DP directory layout"; issue 4).
//
// Guarantees:
//  - ROOT/<package>/ is at every instant one complete version (or absent before the first
//    install): the new tree is staged under ROOT/.despool/staging/ and swapped in with
//    renameat2(RENAME_EXCHANGE) (plain rename for a first install).
//  - A file a refresh would replace or remove is never swapped away while any process holds it
//    open, mapped or executing (unless `force`): the refresh is deferred and nothing live changes.
//  - Crash safety: a per-package journal records the switch intent; Recover() (and every
//    Refresh of that package) brings a DP killed at any point back to exactly the old or the new
//    version with a matching manifest and no stray files.
//  - One refresh per (DP, package) at a time: flock on ROOT/.despool/locks/<package>.lock.
//  - No ZeroMQ, no global state. Every filesystem call goes through an Os (os.h).
//
// Layout under ROOT/.despool/ (all on the DP's filesystem):
//   staging/<pkg>@<version>            a staged tree (complete once its .manifest exists)
//   staging/<pkg>@<version>.manifest   its manifest; kept across a deferral for reuse
//   staging/<pkg>@spare                the tree retired by the last switch: the next staging
//                                      starts from it and changes only what differs (it holds
//                                      the previous version's changed files until then). After
//                                      a first install (no tree retired) it is seeded with a
//                                      hard-link clone of the new live tree (seed_spare)
//   staging/<pkg>@seeding              that clone being built; renamed to <pkg>@spare when
//                                      complete, removed by recovery after a crash
//   state/<pkg>.manifest               the manifest of what is live (installed version, source)
//   journal/<pkg>.journal              switch intent; present only while a switch is in flight
//   trash/<pkg>@...                    retired trees being removed
//   locks/<pkg>.lock                   the per-package flock
//   check/                             scratch dirs for CheckDpRoot
//
// Thread-safety: one Engine may serve concurrent calls for different packages (or the same
// package: the second gets a retryable "locked" error unless lock_wait allows it to wait;
// Verify/Repair on a package being refreshed get kUnavailable).
//
// Typical worker use:
//   IgnoreLeaseBreakSignal();                       // once, at start-up
//   Engine engine;                                  // real OS, automatic in-use probe
//   engine.CheckDpRoot(root);                       // refuse the DP on error
//   engine.Recover(root);                           // before serving it
//   RefreshOutcome out = engine.Refresh(req, on_progress, cancel_token);
//   switch (out.kind) { case OutcomeKind::kDeferred: /* retry after out.suggested_delay */ ... }
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "despool/common/result.h"
#include "despool/workers/inuse.h"
#include "despool/workers/manifest.h"
#include "despool/workers/os.h"

namespace despool::workers {

// Cooperative cancellation, shared between the caller (who cancels, from any thread) and the
// engine (which polls it between files and copy chunks, and waits on it while throttled).
// Cancellation is honoured only before the switch; once the swap has happened the refresh
// completes (the outcome is then applied, never cancelled).
class CancelToken {
 public:
  void Cancel() const;
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // Waits up to `d`; true if cancelled (immediately or during the wait).
  bool WaitFor(std::chrono::nanoseconds d) const;

 private:
  mutable std::atomic<bool> cancelled_{false};
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
};

// Copy-rate throttle. The engine asks before copying each chunk; the limiter answers how long
// to wait before the chunk may go (0 = now). Share one limiter between concurrent refreshes to
// cap a worker's total rate (--max-bytes-per-second). Must be thread-safe.
class RateLimiter {
 public:
  virtual ~RateLimiter() = default;
  virtual std::chrono::nanoseconds Reserve(std::uint64_t bytes) = 0;
};
// A token bucket of `bytes_per_second` with a burst of max(bytes_per_second / 10, 1 MiB).
std::shared_ptr<RateLimiter> MakeTokenBucket(std::uint64_t bytes_per_second);

enum class Phase { kScan, kStage, kSync, kInUseCheck, kSwitch, kRetire, kDone };
const char* PhaseName(Phase phase);

struct Progress {
  Phase phase = Phase::kScan;
  std::uint64_t files_done = 0;   // files staged (linked or copied) so far
  std::uint64_t files_total = 0;  // regular files in the new version
  std::uint64_t bytes_done = 0;   // bytes copied so far (linked files count nothing)
  std::uint64_t bytes_total = 0;  // bytes that must be copied
};
// Called from the refreshing thread at phase changes and during staging (at most every few
// milliseconds or per copied file). Must not block for long.
using ProgressFn = std::function<void(const Progress&)>;

struct RefreshOptions {
  // Compare the content of every file (hash) instead of trusting size+mtime+mode.
  bool checksum = false;
  // Skip the in-use veto: swap anyway (readers keep their old open files).
  bool force = false;
  // Treat any open file of the package as blocking, not only files that would change.
  bool any_open_blocks = false;
  // Throttle copies (nullptr = unthrottled). See MakeTokenBucket.
  std::shared_ptr<RateLimiter> rate_limiter;
  // Suggested delay reported with a deferral.
  std::chrono::milliseconds defer_delay{30000};
  // Free space kept in reserve beyond what the copy needs (bytes).
  std::uint64_t reserve_bytes = 16ull << 20;
  // How long to wait for the per-package lock before a retryable "locked" error.
  std::chrono::milliseconds lock_wait{0};
  // Keep a staged tree when the refresh is deferred so the retry does not copy again.
  bool keep_staged_on_defer = true;
};

struct RefreshRequest {
  std::string dp_root;      // absolute path of the DP root
  std::string package_id;   // validated with ValidatePackageId
  std::uint64_t version = 0;
  std::string source_dir;   // absolute; validated with ValidateSourcePath
  RefreshOptions options;
};

struct RefreshStats {
  std::uint64_t files_total = 0;    // regular files in the new version
  std::uint64_t files_copied = 0;
  std::uint64_t files_linked = 0;   // hard-linked from the live tree (unchanged)
  std::uint64_t files_removed = 0;  // regular files of the old version absent from the new one
  std::uint64_t bytes_copied = 0;
  std::uint64_t bytes_linked = 0;
  std::uint64_t entries_total = 0;  // files + dirs + symlinks
  bool reused_staging = false;      // a staged tree kept from a deferral was used
  // The source scan or the live walk found the caches cold (the stats of a top level averaged
  // over 20 us; only with threads > 1): that walk was split over threads, and the staging read
  // ahead what the cold side will need: the files to copy (source), the base tree's directories
  // (DP); how many of each it started reading.
  bool cold_caches = false;
  std::uint64_t prefetched_files = 0, prefetched_dirs = 0;
  // Wall time per phase. scan: source scan (+ live walk beside it); stage: building the staged
  // tree (copies included); sync: manifest written, syncfs (+ source re-check beside it),
  // manifest renamed into place; switch: journal, exchange, commit; retire: old tree -> spare
  // (after a first install: the spare seeded from the live tree, see seed_spare).
  std::chrono::nanoseconds scan{0}, stage{0}, sync{0}, in_use_check{0}, switch_time{0},
      retire{0}, total{0};
};

enum class OutcomeKind {
  kApplied,         // the new version is live; stats filled
  kUpToDate,        // the installed version is >= the requested one; nothing touched
  kDeferred,        // files in use (or the probe could not see everything); nothing live changed
  kRetryableError,  // disk full, I/O error, source changed during copy, locked...; live untouched
  kPermanentError,  // hostile or invalid source/request; retrying cannot help
  kCancelled,       // cancelled before the switch; live untouched, staging removed
};
const char* OutcomeKindName(OutcomeKind kind);

struct RefreshOutcome {
  OutcomeKind kind = OutcomeKind::kPermanentError;
  // kApplied: the new version; kUpToDate: the installed one. Also set for errors when known.
  std::optional<std::uint64_t> installed_version;
  RefreshStats stats;                   // kApplied (partially filled otherwise)
  // kDeferred: the paths (relative to the package dir) in use and their holders where known;
  // in_use.complete=false when the probe could not see everything (reason in message).
  InUseReport in_use;
  std::chrono::milliseconds suggested_delay{0};
  // Errors (and deferral/cancel explanations): the error with code and message.
  Error error;
  std::string message;                  // one human line for logs and job last_error

  bool ok() const { return kind == OutcomeKind::kApplied || kind == OutcomeKind::kUpToDate; }
};

struct VerifyReport {
  std::uint64_t version = 0;
  std::vector<std::string> missing;  // in the manifest, absent from the live dir
  std::vector<std::string> extra;    // in the live dir, not in the manifest
  std::vector<std::string> changed;  // type, size, mode, mtime, link target or content differs
  bool clean() const { return missing.empty() && extra.empty() && changed.empty(); }
};

struct VerifyOptions {
  bool content = true;  // hash every file (false: size, mode, mtime only)
};

struct EngineConfig {
  Os* os = nullptr;                    // nullptr = RealOs()
  // nullptr = MakeAutoProbe(). The lease probe needs IgnoreLeaseBreakSignal() (inuse.h) called
  // once at process start-up, before threads; without it the auto probe uses the /proc scan.
  // Calls are serialised by the engine (a probe need not be thread-safe).
  std::shared_ptr<InUseProbe> probe;
  // Observability/test hook, called at named points: "staging", "copying" (after the first
  // chunk of a copied file), "staged" (staged tree durable, manifest not yet in place),
  // "checked" (in-use check passed), "journaled" (switch intent durable), "exchanged" (swap
  // done, manifest not yet updated), "committed" (manifest updated), "retired". Calls are
  // serialised; all come from the refreshing thread except "copying", which may come from a
  // copy helper thread when threads > 1. It may block (tests stop a child there and kill it).
  std::function<void(const char* point)> checkpoint;
  // Threads one refresh may use. With 2 or more: the walk of the live tree runs beside the scan
  // of the source; with cold caches each of the two is split by top-level directory over
  // 2 x `threads` threads (more inode reads in flight, and cores kept busy through them; up to
  // 4 x threads threads walk during a cold scan, beside the read-ahead threads below), file
  // copies run on threads-1 helpers beside
  // the staging walk (plus one thread that starts each copied file's writeback, so the disk
  // works during the copy), what the staging takes out of the reused spare tree is renamed
  // aside and removed on a thread of its own (freeing a file's blocks can wait for the device's
  // discard), with cold caches the scan starts reading the files it finds changed and more
  // threads read ahead the rest to copy and list the spare's directories (four threads for
  // those; real system calls, not through the Os: hints that decide nothing), and
  // the re-check of the source runs beside the syncfs of the staged tree. With 1 everything
  // (each copied file's writeback start too) runs on the calling thread in one fixed order, so
  // the n-th call through the Os is always the same call (tests that enumerate call points by
  // index, or observe every call, use 1). The Os must be thread-safe (RealOs and
  // FaultInjectingOs are).
  int threads = 2;
  // After a first install (there was no live tree, so no tree is retired), seed the package's
  // spare with a hard-link clone of the new live tree: directories, regular files hard-linked
  // to the live ones (no symlinks), built as staging/<pkg>@seeding and renamed to
  // staging/<pkg>@spare (an existing spare is kept). The next refresh then stages from it
  // like any later one, keeping each unchanged file as is instead of linking it from the live
  // tree (an incremental refresh right after an install costs what the steady state does).
  // Costs the install about one call per file and directory (N linkat, D mkdir, 2 opens per
  // non-empty directory; no fsync), counted in stats.retire. Only an optimisation: a failure
  // is logged, the partial clone removed, and the outcome stays applied; a crash during it
  // leaves the install complete and a temporary tree that recovery removes.
  bool seed_spare = true;
};

class Engine {
 public:
  explicit Engine(EngineConfig config = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // The DP check a worker runs at start-up: ROOT exists and is a directory, ROOT/.despool is
  // created if missing (a real directory on the same filesystem, not a symlink), writable, and
  // renameat2(RENAME_EXCHANGE) works there (tested on a scratch pair under .despool/check/).
  // kFailedPrecondition when the filesystem lacks RENAME_EXCHANGE.
  Status CheckDpRoot(const std::string& dp_root);

  // Crash recovery for every package of the DP (run at start-up before serving it): completes or
  // rolls back interrupted switches, removes incomplete staging, temp files and retired trees.
  // Complete staged trees are kept for reuse. Each package is handled under its lock.
  Status Recover(const std::string& dp_root);

  // Brings the package to req.version. Never throws (except InjectedCrash from a test Os).
  RefreshOutcome Refresh(const RefreshRequest& req, const ProgressFn& progress,
                         const CancelToken& cancel);

  // The installed version (nullopt when the package is not installed).
  Result<std::optional<std::uint64_t>> InstalledVersion(const std::string& dp_root,
                                                        const std::string& package_id);
  // The installed manifest (kNotFound when not installed).
  Result<Manifest> InstalledManifest(const std::string& dp_root, const std::string& package_id);

  // Compares the live package with its manifest (kNotFound when not installed).
  Result<VerifyReport> Verify(const std::string& dp_root, const std::string& package_id,
                              const VerifyOptions& options = {});

  // Restores the live package to its manifest: re-stages the installed version from the source
  // recorded in the manifest (live files whose content still matches are linked, others copied)
  // and switches it in like a refresh (same in-use veto, `force` honoured). A source that no
  // longer matches the manifest is a permanent error. kUpToDate when nothing needed repair.
  RefreshOutcome Repair(const std::string& dp_root, const std::string& package_id,
                        const RefreshOptions& options, const ProgressFn& progress,
                        const CancelToken& cancel);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace despool::workers
