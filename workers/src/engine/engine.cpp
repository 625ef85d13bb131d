// The refresh engine: stage -> in-use check -> journaled atomic switch -> retire.
// See engine.h for the guarantees and the on-disk layout.
#include "despool/workers/engine.h"

#include <spdlog/spdlog.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "despool/common/logging.h"
#include "despool/common/names.h"
#include "fsutil.h"
#include "prefetch.h"
#include "scan.h"

namespace despool::workers {

using internal::Fd;
using internal::Join;
using internal::kDirFlags;
using internal::MtimeNs;
using internal::SrcEntry;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kMetaDir = ".despool";
constexpr size_t kCopyChunk = 8u << 20;
// The chunk of a rate-limited copy: each waits for its share of the rate on its own, so a copy
// reports progress as it goes (at 2 MiB/s an 8 MiB chunk would wait 4 s with nothing to show).
constexpr size_t kThrottledCopyChunk = 256u << 10;
constexpr size_t kHashBuf = 1u << 20;

std::shared_ptr<spdlog::logger> Log() { return GetLogger("engine"); }

std::string StagedName(const std::string& pkg, std::uint64_t v) {
  return pkg + "@" + std::to_string(v);
}
std::string ManifestFile(const std::string& pkg) { return pkg + ".manifest"; }
// The tree retired by the last switch, kept as the base of the next staging.
std::string SpareName(const std::string& pkg) { return pkg + "@spare"; }
// A spare being seeded after a first install (SeedSpare). Not "<pkg>@<version>" nor the spare,
// so the staging cleanup (RecoverPackage) removes what a crash left of it.
std::string SeedingName(const std::string& pkg) { return pkg + "@seeding"; }
std::string JournalFile(const std::string& pkg) { return pkg + ".journal"; }

bool IsPermanent(const Error& e) {
  return e.code == ErrorCode::kInvalidArgument || e.code == ErrorCode::kFailedPrecondition;
}

RefreshOutcome ErrorOutcome(Error e) {
  RefreshOutcome o;
  o.kind = IsPermanent(e) ? OutcomeKind::kPermanentError : OutcomeKind::kRetryableError;
  o.message = e.message;
  o.error = std::move(e);
  return o;
}

// The switch intent. Written (atomically, fsynced) before the swap; removed after retiring.
struct JournalRecord {
  std::string package;
  std::uint64_t to_version = 0;
  std::string staged_name;
  std::uint64_t staged_dev = 0;
  std::uint64_t staged_ino = 0;

  std::string Serialize() const {
    return "despool-journal 1\npackage " + package + "\nto_version " + std::to_string(to_version) +
           "\nstaged " + staged_name + "\ndev " + std::to_string(staged_dev) + "\nino " +
           std::to_string(staged_ino) + "\nend\n";
  }
  static Result<JournalRecord> Parse(const std::string& text) {
    JournalRecord j;
    auto bad = [] { return MakeError(ErrorCode::kCorruption, "journal: malformed"); };
    const std::vector<std::string_view> lines = internal::SplitLines(text);
    if (lines.size() != 7 || lines[0] != "despool-journal 1" || lines[6] != "end") return bad();
    // A missing value reads as empty: refused like an empty name, or as a number.
    auto val = [&](int i, std::string_view key) {
      return internal::HeaderValue(lines[i], key).value_or(std::string_view());
    };
    j.package = val(1, "package");
    j.staged_name = val(3, "staged");
    if (j.package.empty() || j.staged_name.empty() ||
        !internal::ParseNum(val(2, "to_version"), &j.to_version) ||
        !internal::ParseNum(val(4, "dev"), &j.staged_dev) ||
        !internal::ParseNum(val(5, "ino"), &j.staged_ino)) {
      return bad();
    }
    return j;
  }
};

// A read buffer allocated on first use and not zero-filled.
class IoBuffer {
 public:
  char* data() {
    if (!data_) data_ = std::make_unique_for_overwrite<char[]>(kHashBuf);
    return data_.get();
  }
  size_t size() const { return kHashBuf; }

 private:
  std::unique_ptr<char[]> data_;
};

// A thread that runs `work` on each item pushed to it, in order. Stop waits for the thread;
// with `drain` it first works through what is queued, else drops it. An exception from `work`
// (a test's InjectedCrash: it must stop the refresh as a kill -9 would, whichever thread it
// hit) ends the thread, drops the queue, and is handed to the caller by Stop.
template <typename Item>
class QueueThread {
 public:
  explicit QueueThread(std::function<void(Item&)> work) : work_(std::move(work)) {}
  ~QueueThread() { (void)Stop(false); }
  QueueThread(const QueueThread&) = delete;
  QueueThread& operator=(const QueueThread&) = delete;

  // Throws std::system_error when no thread can be had.
  void Start() { thread_ = std::thread([this] { Loop(); }); }
  bool running() const { return thread_.joinable(); }

  void Push(Item item) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(item));
    }
    cv_.notify_one();
  }

  std::exception_ptr Stop(bool drain) noexcept {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      if (!drain) queue_.clear();
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    return std::exchange(exception_, nullptr);
  }

 private:
  void Loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopped, and nothing (left) to drain
      Item item = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      try {
        work_(item);
      } catch (...) {
        lock.lock();
        exception_ = std::current_exception();
        queue_.clear();
        return;
      }
      lock.lock();
    }
  }

  std::function<void(Item&)> work_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  bool stop_ = false;
  std::exception_ptr exception_;
  std::thread thread_;
};

// Descriptors of ROOT and ROOT/.despool/*.
struct Dirs {
  Fd root, meta, staging, state, journal, trash, locks;
};

}  // namespace

struct Engine::Impl {
  Impl(Os& o, std::shared_ptr<InUseProbe> p, std::function<void(const char*)> cp, int t)
      : os(o), probe(std::move(p)), checkpoint(std::move(cp)), threads(t) {}

  Os& os;
  std::shared_ptr<InUseProbe> probe;
  std::mutex probe_mu;  // probes need not be thread-safe
  std::function<void(const char*)> checkpoint;
  std::mutex checkpoint_mu;  // "copying" may be passed on a copy helper thread
  int threads = 2;
  bool seed_spare = true;

  void Checkpoint(const char* point) {
    if (!checkpoint) return;
    std::lock_guard lock(checkpoint_mu);
    checkpoint(point);
  }

  // Runs `side` and `main_fn`; returns side's status (main_fn reports through its captures).
  // With threads > 1 they run at once, on the calling thread and a helper (internal::
  // RunOnThreads, which falls back to this thread alone when no thread can be had); otherwise
  // side runs first, then main_fn. Only read-only passes (stat, open, readdir) go on the side,
  // so the interleaving changes nothing on disk; an exception in either (a test's
  // InjectedCrash) reaches the caller after both have finished. (Either may start hint threads
  // that outlive it, read-only too: Job::spare_prefetch.)
  Status Beside(const std::function<Status()>& side, const std::function<void()>& main_fn) {
    const auto statuses = internal::RunOnThreads(2, threads > 1 ? 2 : 1, [&](std::size_t i) -> Status {
      if (i == 0) return side();
      main_fn();
      return Status::Ok();
    });
    return statuses[0];
  }

  // ---- layout ----

  Result<Fd> OpenRoot(const std::string& dp_root) {
    if (dp_root.empty() || dp_root[0] != '/') {
      return MakeError(ErrorCode::kInvalidArgument, "DP root must be an absolute path");
    }
    int fd = os.OpenAt(AT_FDCWD, dp_root.c_str(), O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0) return SysError("open DP root " + dp_root, errno);
    return Fd(&os, fd);
  }

  // Opens ROOT/.despool and its subdirectories, creating them when `create`.
  Status OpenMeta(Dirs* d, bool create) {
    struct stat root_st, meta_st;
    if (os.Fstat(d->root.get(), &root_st) != 0) return SysError("stat DP root", errno);
    auto open = [&](int at, const char* name) {
      return create ? internal::MakeDir(os, at, name, 0755) : internal::OpenDir(os, at, name);
    };
    auto meta = open(d->root.get(), kMetaDir);
    if (!meta.ok()) {
      if (meta.error().sys_errno == ELOOP || meta.error().sys_errno == ENOTDIR) {
        return MakeError(ErrorCode::kFailedPrecondition,
                         "ROOT/.despool is not a directory (symlinks are refused)");
      }
      return meta.take_error();
    }
    d->meta = std::move(meta).value();
    if (os.Fstat(d->meta.get(), &meta_st) != 0) return SysError("stat .despool", errno);
    if (meta_st.st_dev != root_st.st_dev) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "ROOT/.despool is on another filesystem than ROOT");
    }
    const std::pair<const char*, Fd*> subs[] = {{"staging", &d->staging}, {"state", &d->state},
                                                {"journal", &d->journal}, {"trash", &d->trash},
                                                {"locks", &d->locks}};
    for (const auto& [name, fd] : subs) {
      DESPOOL_ASSIGN_OR_RETURN(*fd, open(d->meta.get(), name));
    }
    return Status::Ok();
  }

  Result<Dirs> OpenDirs(const std::string& dp_root, bool create) {
    Dirs d;
    DESPOOL_ASSIGN_OR_RETURN(d.root, OpenRoot(dp_root));
    DESPOOL_RETURN_IF_ERROR(OpenMeta(&d, create));
    return d;
  }

  Result<Fd> Lock(Dirs& d, const std::string& pkg, std::chrono::milliseconds wait,
                  const CancelToken* cancel) {
    std::string name = pkg + ".lock";
    int raw = os.OpenAt(d.locks.get(), name.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW, 0644);
    if (raw < 0) return SysError("open lock " + name, errno);
    Fd fd(&os, raw);
    auto deadline = Clock::now() + wait;
    for (;;) {
      if (os.Flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return fd;
      if (errno != EWOULDBLOCK && errno != EINTR) return SysError("flock " + name, errno);
      if (Clock::now() >= deadline) {
        return MakeError(ErrorCode::kUnavailable,
                         "package " + pkg + " is locked by another refresh on this DP");
      }
      if (cancel != nullptr && cancel->WaitFor(std::chrono::milliseconds(10))) {
        return MakeError(ErrorCode::kAborted, "cancelled while waiting for the package lock");
      }
      if (cancel == nullptr) ::usleep(10000);
    }
  }

  Result<std::optional<Manifest>> ReadManifest(int dirfd, const std::string& name) {
    auto text = internal::ReadSmallFile(os, dirfd, name);
    if (!text.ok()) {
      if (text.error().code == ErrorCode::kNotFound) return std::optional<Manifest>();
      return text.take_error();
    }
    DESPOOL_ASSIGN_OR_RETURN(Manifest m, ParseManifest(*text));
    return std::optional<Manifest>(std::move(m));
  }

  // ---- recovery ----

  // Keeps a tree of the package that is no longer needed as its spare (the base of the next
  // staging), or removes it when there already is a spare.
  Status KeepAsSpare(Dirs& d, const std::string& pkg, int at, const std::string& name) {
    if (os.RenameAt2(at, name.c_str(), d.staging.get(), SpareName(pkg).c_str(),
                     RENAME_NOREPLACE) == 0) {
      return Status::Ok();
    }
    if (errno == ENOENT) return Status::Ok();
    if (errno != EEXIST) return SysError("keep " + name + " as spare", errno);
    int trash_fd = d.trash.get();
    std::string trash_name = pkg + "@retired." + std::to_string(::getpid());
    if (os.RenameAt2(at, name.c_str(), trash_fd, trash_name.c_str(), 0) != 0) {
      return internal::RemoveTree(os, at, name);
    }
    return internal::RemoveTree(os, trash_fd, trash_name);
  }

  // Completes or rolls back an interrupted switch of `pkg`. Caller holds the lock.
  Status RollJournal(Dirs& d, const std::string& pkg) {
    std::string jname = JournalFile(pkg);
    auto text = internal::ReadSmallFile(os, d.journal.get(), jname);
    if (!text.ok()) {
      if (text.error().code == ErrorCode::kNotFound) return Status::Ok();
      return text.take_error();
    }
    DESPOOL_ASSIGN_OR_RETURN(JournalRecord j, JournalRecord::Parse(*text));
    if (j.package != pkg) return MakeError(ErrorCode::kCorruption, "journal names another package");
    struct stat st;
    bool switched = os.FstatAt(d.root.get(), pkg.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                    st.st_ino == j.staged_ino && st.st_dev == j.staged_dev;
    if (switched) {
      // Roll forward: the manifest must describe what is live.
      std::string staged_manifest = j.staged_name + ".manifest";
      if (os.RenameAt2(d.staging.get(), staged_manifest.c_str(), d.state.get(),
                       ManifestFile(pkg).c_str(), 0) == 0) {
        if (os.Fsync(d.state.get()) != 0) return SysError("fsync state", errno);
      } else if (errno == ENOENT) {
        DESPOOL_ASSIGN_OR_RETURN(auto m, ReadManifest(d.state.get(), ManifestFile(pkg)));
        if (!m || m->version != j.to_version) {
          return MakeError(ErrorCode::kCorruption,
                           "journal of " + pkg + ": live is version " +
                               std::to_string(j.to_version) + " but its manifest is missing");
        }
      } else {
        return SysError("commit manifest of " + pkg, errno);
      }
      // What is left at the staged name is the old tree.
      DESPOOL_RETURN_IF_ERROR(KeepAsSpare(d, pkg, d.staging.get(), j.staged_name));
      Log()->info("recovered switch: rolled forward package={} version={}", pkg, j.to_version);
    } else {
      // The swap never happened: live and manifest are the old version. The staged tree is
      // complete (the journal is written after it); the staging cleanup decides its fate.
      Log()->info("recovered switch: rolled back package={} version={}", pkg, j.to_version);
    }
    if (os.UnlinkAt(d.journal.get(), jname.c_str(), 0) != 0 && errno != ENOENT) {
      return SysError("remove journal " + jname, errno);
    }
    if (os.Fsync(d.journal.get()) != 0) return SysError("fsync journal dir", errno);
    return Status::Ok();
  }

  // Journal, then staging/trash/temp leftovers of `pkg`. Keeps a complete staged tree of
  // `keep_version` (if set) for reuse; everything else of the package is removed.
  Status RecoverPackage(Dirs& d, const std::string& pkg, std::optional<std::uint64_t> keep_version) {
    DESPOOL_RETURN_IF_ERROR(RollJournal(d, pkg));
    std::string prefix = pkg + "@";
    const std::string tmp_names[] = {JournalFile(pkg) + ".tmp"};
    for (const auto& t : tmp_names) {
      if (os.UnlinkAt(d.journal.get(), t.c_str(), 0) != 0 && errno != ENOENT) {
        return SysError("remove " + t, errno);
      }
    }
    std::string mtmp = ManifestFile(pkg) + ".tmp";
    if (os.UnlinkAt(d.state.get(), mtmp.c_str(), 0) != 0 && errno != ENOENT) {
      return SysError("remove " + mtmp, errno);
    }
    // Staging: "<pkg>@<v>" + "<pkg>@<v>.manifest" pairs.
    std::vector<DirEntry> entries;
    if (os.ReadDir(d.staging.get(), &entries) != 0) return SysError("readdir staging", errno);
    std::unordered_map<std::uint64_t, int> parts;  // version -> bit 1 dir, bit 2 manifest
    std::vector<std::string> remove;
    for (const auto& e : entries) {
      if (e.name.rfind(prefix, 0) != 0) continue;
      std::string rest = e.name.substr(prefix.size());
      if (rest == "spare") continue;  // any content will do: staging re-checks every entry
      // Anything else that is not a version ("<pkg>@seeding", a spare whose seeding a crash
      // interrupted, among others) is removed below.
      std::uint64_t v = 0;
      auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), v);
      std::string suffix(p);
      if (ec != std::errc() || p == rest.data()) {
        remove.push_back(e.name);
      } else if (suffix.empty()) {
        parts[v] |= 1;
      } else if (suffix == ".manifest") {
        parts[v] |= 2;
      } else {
        remove.push_back(e.name);
      }
    }
    for (const auto& [v, bits] : parts) {
      if (bits == 3 && keep_version && *keep_version == v) continue;
      if (bits & 2) remove.push_back(StagedName(pkg, v) + ".manifest");  // first: no longer complete
      if (bits & 1) remove.push_back(StagedName(pkg, v));
    }
    for (const auto& name : remove) {
      DESPOOL_RETURN_IF_ERROR(internal::RemoveTree(os, d.staging.get(), name));
    }
    // Trash: retired trees of this package.
    if (os.ReadDir(d.trash.get(), &entries) != 0) return SysError("readdir trash", errno);
    for (const auto& e : entries) {
      if (e.name.rfind(prefix, 0) != 0) continue;
      DESPOOL_RETURN_IF_ERROR(internal::RemoveTree(os, d.trash.get(), e.name));
    }
    return Status::Ok();
  }

  // The installed version without taking the lock or writing anything: the manifest, corrected
  // by a pending journal whose swap already happened.
  Result<std::optional<std::uint64_t>> PeekInstalled(Dirs& d, const std::string& pkg) {
    std::optional<std::uint64_t> v;
    auto manifest = internal::ReadSmallFile(os, d.state.get(), ManifestFile(pkg));
    if (manifest.ok()) {
      DESPOOL_ASSIGN_OR_RETURN(v, ParseManifestVersion(*manifest));
    } else if (manifest.error().code != ErrorCode::kNotFound) {
      return manifest.take_error();
    }
    auto journal = internal::ReadSmallFile(os, d.journal.get(), JournalFile(pkg));
    if (journal.ok()) {
      auto j = JournalRecord::Parse(*journal);
      struct stat st;
      if (j.ok() && os.FstatAt(d.root.get(), pkg.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
          st.st_ino == j->staged_ino && st.st_dev == j->staged_dev) {
        v = j->to_version;
      }
    }
    return v;
  }

  // ---- refresh ----

  // The threads each of the source scan and the live walk is split over when they find the
  // caches cold (with threads > 1): two per thread. A cold stat alternates between CPU (the
  // inode's instantiation, ~5 us) and waiting for its inode-table block, and the two trees
  // rarely finish together; with one walker per thread the last tree's walkers left a core
  // idle. Cold incremental refreshes of engine_bench's package, interleaved runs: 1, 1.5 and 2
  // walkers per thread took 140-150, 121-138 and 122-138 ms.
  int ColdWalkers() const { return threads > 1 ? 2 * threads : 1; }

  struct Job {
    std::string pkg;
    std::uint64_t version = 0;
    std::string source;
    const RefreshOptions* opt = nullptr;
    const ProgressFn* progress = nullptr;
    const CancelToken* cancel = nullptr;
    const Manifest* repair_of = nullptr;        // repair: the manifest to restore
    std::unordered_set<std::string> repair_bad; // repair: live paths that must not be linked

    Dirs d;
    std::string staged;
    std::optional<Manifest> old;
    bool live_exists = false;
    Fd live;
    std::unordered_map<std::string, struct stat> live_stats;
    std::uint64_t live_files = 0;  // regular files in the live tree
    std::vector<SrcEntry> src;
    bool cold_caches = false;  // the source scan found them cold (ScanSource)
    bool live_cold = false;    // the live walk found the DP's cold (WalkTreeOnThreads)
    bool files_hinted_in_scan = false;  // the scan read ahead the files to copy (RunLocked)
    // Bytes that CopyPool helpers copied into files they have not finished (or that Drain has
    // not yet counted in prog.bytes_done).
    std::atomic<std::uint64_t> helper_bytes{0};
    // Per source entry (same index): the live entry at its path (nullptr if none), and for a
    // file planned to be linked the manifest entry that vouches for it.
    std::vector<const struct stat*> live_of;
    std::vector<const ManifestEntry*> link_from;
    Manifest next;
    std::unordered_set<ino_t> staged_inodes;
    RefreshStats stats;
    Progress prog;
    Clock::time_point last_progress{};
    bool staged_complete = false;  // the staged manifest is written
    IoBuffer buf;
    // Lists the spare's directories ahead of the staging once the live walk finds the caches
    // cold (StartSparePrefetch). Last member: stopped and joined before the stats it writes go.
    std::jthread spare_prefetch;
  };

  // The staging's progress with the bytes that helper threads copied so far into files not
  // yet finished (Job::helper_bytes); refreshing thread only.
  void ReportCopying(Job& job) {
    const std::uint64_t counted = job.prog.bytes_done;
    job.prog.bytes_done += job.helper_bytes.load(std::memory_order_relaxed);
    Report(job, Phase::kStage, false);
    job.prog.bytes_done = counted;
  }

  void Report(Job& job, Phase phase, bool force = true) {
    job.prog.phase = phase;
    if (!job.progress || !*job.progress) return;
    auto now = Clock::now();
    if (!force && now - job.last_progress < std::chrono::milliseconds(50)) return;
    job.last_progress = now;
    (*job.progress)(job.prog);
  }

  Status RemoveStaged(Job& job) {
    if (!job.d.staging.valid() || job.staged.empty()) return Status::Ok();
    for (const std::string& m : {job.staged + ".manifest", job.staged + ".manifest.tmp"}) {
      if (os.UnlinkAt(job.d.staging.get(), m.c_str(), 0) != 0 && errno != ENOENT) {
        return SysError("remove " + m, errno);
      }
    }
    return internal::RemoveTree(os, job.d.staging.get(), job.staged);
  }

  // Turns a staging failure into an outcome, removing the partial staged tree.
  RefreshOutcome Abandon(Job& job, Error e) {
    if (auto s = RemoveStaged(job); !s.ok()) {
      Log()->warn("could not remove staging package={} error={}", job.pkg, s.error().ToString());
    }
    RefreshOutcome o = ErrorOutcome(std::move(e));
    o.installed_version = job.old ? std::optional<std::uint64_t>(job.old->version) : std::nullopt;
    o.stats = job.stats;
    return o;
  }

  RefreshOutcome Cancelled(Job& job) {
    (void)RemoveStaged(job);
    RefreshOutcome o;
    o.kind = OutcomeKind::kCancelled;
    o.error = MakeError(ErrorCode::kAborted, "cancelled before the switch");
    o.message = o.error.message;
    o.installed_version = job.old ? std::optional<std::uint64_t>(job.old->version) : std::nullopt;
    return o;
  }

  // Hashes a whole file from offset 0, reading through `buf` (one per refresh: allocating a
  // fresh megabyte per file costs more than hashing small files).
  Result<std::uint64_t> HashFd(int fd, const std::string& what, IoBuffer& buf) {
    XXH3_state_t* state = XXH3_createState();
    if (state == nullptr) return MakeError(ErrorCode::kResourceExhausted, "XXH3_createState");
    std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> guard(state, &XXH3_freeState);
    XXH3_64bits_reset(state);
    off_t off = 0;
    for (;;) {
      ssize_t n = os.Pread(fd, buf.data(), buf.size(), off);
      if (n < 0) {
        if (errno == EINTR) continue;
        return SysError("read " + what, errno);
      }
      if (n == 0) break;
      XXH3_64bits_update(state, buf.data(), static_cast<size_t>(n));
      off += n;
    }
    return static_cast<std::uint64_t>(XXH3_64bits_digest(state));
  }

  bool SameFile(const struct stat& a, const struct stat& b) {
    return a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == b.st_size &&
           MtimeNs(a) == MtimeNs(b) && a.st_ctim.tv_sec == b.st_ctim.tv_sec &&
           a.st_ctim.tv_nsec == b.st_ctim.tv_nsec && a.st_mode == b.st_mode;
  }

  Error SourceChanged(const std::string& path) {
    return MakeError(ErrorCode::kUnavailable, "source changed during the copy: " + path);
  }

  // Waits for the rate limiter; false if cancelled meanwhile.
  bool Throttle(Job& job, std::uint64_t bytes) {
    if (!job.opt->rate_limiter) return true;
    auto wait = job.opt->rate_limiter->Reserve(bytes);
    if (wait.count() <= 0) return !job.cancel->cancelled();
    return !job.cancel->WaitFor(wait);
  }

  // Copies one regular file into the staged dir; returns its content hash and inode. `buf` is
  // the calling thread's; progress goes to `job` only on the refreshing thread (on_main), the
  // caller counts the copy in job.stats.
  // `written`, when given, receives the staged file's descriptor (for CopyPool's writeback
  // starter); without it the writeback is started here.
  Status CopyFile(Job& job, int src_dir, int dst_dir, const SrcEntry& e, IoBuffer& buf,
                  bool on_main, std::uint64_t* hash, ino_t* ino, bool* cancelled,
                  Fd* written = nullptr) {
    int raw = os.OpenAt(src_dir, e.name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0);
    if (raw < 0) {
      if (errno == ELOOP || errno == ENOENT) return SourceChanged(e.path);
      return SysError("open source " + e.path, errno);
    }
    Fd src(&os, raw);
    struct stat before;
    if (os.Fstat(src.get(), &before) != 0) return SysError("stat source " + e.path, errno);
    if (!S_ISREG(before.st_mode) || !SameFile(before, e.st)) return SourceChanged(e.path);
    raw = os.OpenAt(dst_dir, e.name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (raw < 0) return SysError("create staged " + e.path, errno);
    Fd dst(&os, raw);
    const auto size = static_cast<std::uint64_t>(before.st_size);
    std::uint64_t done = 0;
    bool use_cfr = true;
    bool first_chunk = true;
    const size_t max_chunk = job.opt->rate_limiter ? kThrottledCopyChunk : kCopyChunk;
    while (done < size) {
      size_t chunk = static_cast<size_t>(std::min<std::uint64_t>(max_chunk, size - done));
      if (job.cancel->cancelled() || !Throttle(job, chunk)) {
        *cancelled = true;
        return Status::Ok();
      }
      ssize_t n;
      if (use_cfr) {
        off_t in_off = static_cast<off_t>(done), out_off = static_cast<off_t>(done);
        n = os.CopyFileRange(src.get(), &in_off, dst.get(), &out_off, chunk, 0);
        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS ||
                      errno == EOPNOTSUPP)) {
          use_cfr = false;  // fall back to read/write for the rest
          continue;
        }
      } else {
        n = os.Pread(src.get(), buf.data(), std::min(chunk, buf.size()), static_cast<off_t>(done));
        if (n > 0) {
          ssize_t off = 0;
          while (off < n) {
            ssize_t w = os.Write(dst.get(), buf.data() + off, static_cast<size_t>(n - off));
            if (w < 0) {
              if (errno == EINTR) continue;
              return SysError("write staged " + e.path, errno);
            }
            off += w;
          }
        }
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        return SysError("copy " + e.path, errno);
      }
      if (n == 0) return SourceChanged(e.path);  // shrank under us
      done += static_cast<std::uint64_t>(n);
      if (first_chunk) {
        first_chunk = false;
        Checkpoint("copying");
      }
      if (on_main) {
        job.prog.bytes_done += static_cast<std::uint64_t>(n);
        Report(job, Phase::kStage, false);
      } else {
        job.helper_bytes.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
      }
    }
    DESPOOL_ASSIGN_OR_RETURN(*hash, HashFd(dst.get(), "staged " + e.path, buf));
    if (os.Fchmod(dst.get(), e.st.st_mode & 07777) != 0) return SysError("chmod " + e.path, errno);
    const struct timespec times[2] = {{0, UTIME_OMIT}, e.st.st_mtim};
    if (os.Futimens(dst.get(), times) != 0) return SysError("set mtime " + e.path, errno);
    struct stat after, staged;
    if (os.Fstat(src.get(), &after) != 0) return SysError("stat source " + e.path, errno);
    if (!SameFile(before, after)) return SourceChanged(e.path);
    if (os.Fstat(dst.get(), &staged) != 0) return SysError("stat staged " + e.path, errno);
    if (static_cast<std::uint64_t>(staged.st_size) != size) return SourceChanged(e.path);
    *ino = staged.st_ino;
    if (written != nullptr) {
      *written = std::move(dst);
    } else {
      StartWriteback(dst.get());
    }
    return Status::Ok();
  }

  // Starts (does not wait for) the writeback of a finished staged file, so the disk works
  // while later files are copied instead of all of it waiting for the syncfs before the
  // switch (the dirty limits here are far above a package: the kernel would not start it
  // itself). Only a head start: durability still comes from that syncfs, which also reports
  // any writeback error (so a failure here is ignored).
  void StartWriteback(int fd) { (void)os.SyncFileRange(fd, 0, 0, SYNC_FILE_RANGE_WRITE); }

  // Quick check: link source file i from the live tree? Returns the manifest entry that
  // vouches for the live file (nullptr: copy).
  const ManifestEntry* PlanLink(Job& job, size_t i) {
    const SrcEntry& e = job.src[i];
    const struct stat* live = job.live_of[i];
    if (live == nullptr || !S_ISREG(live->st_mode)) return nullptr;
    const struct stat& ls = *live;
    if (job.repair_of != nullptr) {
      if (job.repair_bad.count(e.path)) return nullptr;
      const ManifestEntry* m = OldEntry(job, e.path);
      bool ok = m != nullptr && m->type == EntryType::kFile && QuickCheckMatches(ls, *m);
      return ok ? m : nullptr;
    }
    const ManifestEntry* m = OldEntry(job, e.path);
    if (m == nullptr) return nullptr;
    // The source must match the manifest, and so must the live file itself (a file changed in
    // place on the DP is copied afresh, never carried into the new version).
    return m->type == EntryType::kFile && QuickCheckMatches(e.st, *m) && QuickCheckMatches(ls, *m)
               ? m
               : nullptr;
  }

  // rsync's quick check: the same size, mtime and mode as the manifest says.
  static bool QuickCheckMatches(const struct stat& st, const ManifestEntry& m) {
    return static_cast<std::uint64_t>(st.st_size) == m.size && MtimeNs(st) == m.mtime_ns &&
           (st.st_mode & 07777) == m.mode;
  }

  // Whether source file `e` passes the quick check against the installed manifest (the
  // repair's): false means it will be copied. Thread-safe (the scan's threads call it).
  bool SourcePassesQuickCheck(Job& job, const SrcEntry& e) {
    const ManifestEntry* m = OldEntry(job, e.path);
    return m != nullptr && m->type == EntryType::kFile && QuickCheckMatches(e.st, *m);
  }

  const ManifestEntry* OldEntry(Job& job, const std::string& path) {
    const Manifest* m = job.repair_of ? job.repair_of : (job.old ? &*job.old : nullptr);
    if (m == nullptr) return nullptr;
    auto i = m->Find(path);
    return i < 0 ? nullptr : &m->entries[static_cast<size_t>(i)];
  }

  // Repair: a copied file must have the content the manifest says.
  Status CheckRepairContent(Job& job, const SrcEntry& e, std::uint64_t hash) {
    if (job.repair_of == nullptr) return Status::Ok();
    const ManifestEntry* want = OldEntry(job, e.path);
    if (want != nullptr && want->hash == hash) return Status::Ok();
    return MakeError(ErrorCode::kFailedPrecondition,
                     "source no longer matches the manifest of version " +
                         std::to_string(job.version) + ": content of " + e.path);
  }

  void CountCopy(Job& job, const SrcEntry& e, ino_t ino) {
    job.staged_inodes.insert(ino);
    job.stats.files_copied++;
    job.stats.bytes_copied += static_cast<std::uint64_t>(e.st.st_size);
    job.prog.files_done++;
  }

  // What the staging takes out of the reused spare tree (a stale file, an entry the source no
  // longer has): renamed into a scratch dir, .despool/trash/<pkg>@discards.<pid>, and removed
  // there on a thread of its own while the staging goes on. Why: removing a file's last link
  // frees its blocks, and on a filesystem mounted with `discard` (and no journal to batch them)
  // each free waits for the device to discard them: 100 unlinks of ~90 KB files took 10.5 ms
  // here, 100 renames 1.4 ms. The walk only needs the name to be free.
  // Take is thread-safe (copy helpers call it too). Finish, at the end of the staging, waits for
  // every removal, removes the scratch dir and rethrows a removal's exception (a test's
  // InjectedCrash: it stops the refresh as a kill -9 would, whichever thread it hit). Another
  // failed removal only leaves entries behind, which the package's next recovery removes (it
  // empties the trash of `<pkg>@*`), as it does after a crash. With `background` false (threads
  // <= 1) Take removes the entry itself.
  class Discards {
   public:
    Discards(Impl& impl, Dirs& d, const std::string& pkg, bool background)
        : impl_(impl), d_(d), dir_name_(pkg + "@discards." + std::to_string(::getpid())),
          background_(background), removals_([this](std::string& name) {
            if (Status s = internal::RemoveTree(impl_.os, dir_.get(), name); !s.ok()) {
              Log()->warn("could not remove a stale spare entry: {}", s.error().ToString());
            }
          }) {}
    // On a way out without Finish (an exception through the staging): the removals still run
    // and the scratch dir goes too, as far as they can (what is left, recovery removes).
    ~Discards() {
      (void)removals_.Stop(/*drain=*/true);
      if (dir_.valid()) (void)RemoveScratchDir();
    }
    Discards(const Discards&) = delete;
    Discards& operator=(const Discards&) = delete;

    Status Take(int dirfd, const std::string& name) {
      std::unique_lock lock(mu_);
      if (background_ && !failed_ && !dir_.valid()) Start();
      if (dir_.valid()) {
        std::string moved = std::to_string(next_++);
        lock.unlock();
        if (impl_.os.RenameAt2(dirfd, name.c_str(), dir_.get(), moved.c_str(), RENAME_NOREPLACE) == 0) {
          removals_.Push(std::move(moved));
          return Status::Ok();
        }
        // Not renamed (even ENOENT: the scratch dir itself may have been removed under us):
        // the entry must still leave the level, in place.
      } else {
        lock.unlock();
      }
      return internal::RemoveTree(impl_.os, dirfd, name);
    }

    Status Finish() {
      if (auto e = removals_.Stop(/*drain=*/true)) std::rethrow_exception(e);
      if (dir_.valid() && !RemoveScratchDir() && errno != ENOENT) {
        Log()->warn("could not remove {}: {} (the next refresh of the package removes it)",
                    dir_name_, std::strerror(errno));
      }
      return Status::Ok();
    }

   private:
    // Closes and removes the scratch dir (it must be empty); false with errno set on failure.
    bool RemoveScratchDir() {
      dir_.Reset();
      return impl_.os.UnlinkAt(d_.trash.get(), dir_name_.c_str(), AT_REMOVEDIR) == 0;
    }

    // Creates the scratch dir and starts the removals; on failure Take removes in place.
    void Start() {
      failed_ = true;
      if (impl_.os.MkdirAt(d_.trash.get(), dir_name_.c_str(), 0700) != 0 && errno != EEXIST) return;
      dir_ = Fd(&impl_.os, impl_.os.OpenAt(d_.trash.get(), dir_name_.c_str(), kDirFlags, 0));
      if (dir_.valid()) {
        try {
          removals_.Start();
          failed_ = false;
          return;
        } catch (const std::system_error& e) {
          Log()->warn("removing stale spare entries on the staging thread: {}", e.what());
        }
      }
      (void)RemoveScratchDir();  // unopened or without a thread: nothing goes in it
    }

    Impl& impl_;
    Dirs& d_;
    const std::string dir_name_;
    const bool background_;
    std::mutex mu_;             // guards the start, next_ and failed_ (Take is thread-safe)
    std::uint64_t next_ = 0;
    bool failed_ = false;       // no scratch dir or thread: remove in place
    Fd dir_;                    // set before the first Push, reset only after the thread stopped
    QueueThread<std::string> removals_;
  };

  // A file copy queued by the staging walk: source entry `entry` from src_dir into dst_dir
  // (descriptors of levels still on the walk's stack), its hash for job.next.entries[out].
  // clear_first: the reused spare level holds something else under the name; remove it first.
  struct CopyTask {
    int src_dir = -1, dst_dir = -1;
    size_t entry = 0, out = 0;
    bool clear_first = false;
  };

  // Copies spread over helper threads beside the refreshing one (threads > 1). The walk queues
  // each copy (Add) and goes on creating dirs and links; Drain, before a level is finished,
  // runs queued copies on the refreshing thread too until none is left, then folds the results
  // into the job (only the refreshing thread touches job.stats, job.prog and job.next).
  // Copies are independent files, each with its own descriptors; the Os is thread-safe.
  class CopyPool {
   public:
    CopyPool(Impl& impl, Job& job, int helpers, Discards& discards)
        : impl_(impl), job_(job), discards_(discards),
          writeback_([&impl](Fd& fd) {
            impl.StartWriteback(fd.get());
            fd.Reset();
          }) {
      try {
        writeback_.Start();
      } catch (const std::system_error& e) {
        Log()->warn("starting writeback on the copying threads: {}", e.what());
      }
      try {
        for (int t = 0; t < helpers; ++t) threads_.emplace_back([this] { HelperLoop(); });
      } catch (const std::system_error& e) {
        // Fewer helpers (none at worst: Drain then runs every copy on the refreshing thread).
        Log()->warn("copying with {} helper thread(s) instead of {}: {}", threads_.size(),
                    helpers, e.what());
      }
    }
    ~CopyPool() {
      Quiesce();
      {
        std::lock_guard lock(mu_);
        stop_ = true;
      }
      work_cv_.notify_all();
      for (auto& t : threads_) t.join();
      (void)writeback_.Stop(/*drain=*/false);
    }

    // Starts the writeback of the files still waiting for theirs, stops the starter and
    // rethrows an exception it caught (a test's InjectedCrash). Call once no copy runs. Every
    // copied file gets its call, however the threads were scheduled: the calls a refresh makes
    // (which the crash tests enumerate) do not depend on timing, and a call only queues I/O.
    void FinishWriteback() {
      if (auto e = writeback_.Stop(/*drain=*/true)) std::rethrow_exception(e);
    }

    // Drops queued copies and waits for running ones: afterwards no helper uses any descriptor
    // of the walk. Results and errors stay for Drain.
    void Quiesce() noexcept {
      std::unique_lock lock(mu_);
      pending_ -= queue_.size();
      queue_.clear();
      done_cv_.wait(lock, [&] { return pending_ == 0; });
    }
    CopyPool(const CopyPool&) = delete;
    CopyPool& operator=(const CopyPool&) = delete;

    void Add(CopyTask task) {
      {
        std::lock_guard lock(mu_);
        queue_.push_back(task);
        ++pending_;
      }
      work_cv_.notify_one();
    }

    // Runs queued copies here too until every queued copy has finished. The first error (or a
    // helper's exception, rethrown here) wins; after it, queued copies are dropped.
    Status Drain(bool* cancelled) {
      std::unique_lock lock(mu_);
      for (;;) {
        if (failed()) {
          pending_ -= queue_.size();
          queue_.clear();
        }
        if (queue_.empty()) break;
        CopyTask task = queue_.front();
        queue_.pop_front();
        lock.unlock();
        Run(task, impl_.job_buf(job_), true);
        lock.lock();
      }
      // Helpers' copies still running: their bytes so far are reported from here (the
      // progress callback is the refreshing thread's), every kProgressPoll.
      while (!done_cv_.wait_for(lock, kProgressPoll, [&] { return pending_ == 0; })) {
        lock.unlock();
        impl_.ReportCopying(job_);
        lock.lock();
      }
      if (exception_) std::rethrow_exception(std::exchange(exception_, nullptr));
      for (const Done& d : done_) {
        const SrcEntry& e = job_.src[d.entry];
        job_.next.entries[d.out].hash = d.hash;
        impl_.CountCopy(job_, e, d.ino);
        // The refreshing thread counted its own copies' bytes as they went.
        if (!d.on_main) {
          const auto size = static_cast<std::uint64_t>(e.st.st_size);
          job_.prog.bytes_done += size;
          job_.helper_bytes.fetch_sub(size, std::memory_order_relaxed);
        }
      }
      done_.clear();
      if (cancelled_) *cancelled = true;
      Status s = std::exchange(error_, Status::Ok());
      return s;
    }

   private:
    struct Done {
      size_t entry = 0, out = 0;
      std::uint64_t hash = 0;
      ino_t ino = 0;
      bool on_main = false;
    };

    bool failed() const { return !error_.ok() || exception_ || cancelled_; }

    static constexpr auto kProgressPoll = std::chrono::milliseconds(100);

    // Starts the writeback of copied files on its own thread: sync_file_range can wait for
    // the device queue (and ext4 allocates the blocks in it), which the copies should not.
    // Without this thread (it could not be started) the copying thread starts it itself.
    void Written(Fd fd) {
      if (!writeback_.running()) {
        impl_.StartWriteback(fd.get());
        return;
      }
      writeback_.Push(std::move(fd));
    }

    void HelperLoop() {
      IoBuffer buf;
      std::unique_lock lock(mu_);
      for (;;) {
        work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        CopyTask task = queue_.front();
        queue_.pop_front();
        lock.unlock();
        Run(task, buf, false);
        lock.lock();
      }
    }

    // One copy, then its result under the lock. Runs with mu_ not held.
    void Run(const CopyTask& task, IoBuffer& buf, bool on_main) {
      const SrcEntry& e = job_.src[task.entry];
      Done d{task.entry, task.out, 0, 0, on_main};
      bool cancelled = false;
      Status s = Status::Ok();
      std::exception_ptr ex;
      bool skip;
      {
        std::lock_guard lock(mu_);
        skip = failed();
      }
      if (!skip) {
        try {
          if (task.clear_first) s = discards_.Take(task.dst_dir, e.name);
          if (s.ok()) {
            Fd written;
            s = impl_.CopyFile(job_, task.src_dir, task.dst_dir, e, buf, on_main, &d.hash,
                               &d.ino, &cancelled, &written);
            if (written.valid()) Written(std::move(written));
          }
          if (s.ok() && !cancelled) s = impl_.CheckRepairContent(job_, e, d.hash);
        } catch (...) {
          ex = std::current_exception();
        }
      }
      std::lock_guard lock(mu_);
      if (ex && !exception_) exception_ = ex;
      if (!s.ok() && error_.ok()) error_ = s;
      if (cancelled) cancelled_ = true;
      if (!skip && !ex && s.ok() && !cancelled) done_.push_back(d);
      if (--pending_ == 0) done_cv_.notify_all();
    }

    Impl& impl_;
    Job& job_;
    Discards& discards_;
    std::mutex mu_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<CopyTask> queue_;
    size_t pending_ = 0;  // queued + running
    std::vector<Done> done_;
    Status error_ = Status::Ok();
    std::exception_ptr exception_;
    bool cancelled_ = false;
    bool stop_ = false;
    std::vector<std::thread> threads_;
    QueueThread<Fd> writeback_;  // starts each copied file's writeback (Written)
  };
  IoBuffer& job_buf(Job& job) { return job.buf; }

  // One directory level of the staging walk. A level reused from the spare tree lists what it
  // already holds (`existing`, sorted by name); entries the source does not have are removed at
  // FinishDir. The source's children of a level come sorted by name too (ScanSource), so one
  // cursor walks `existing` in step with them.
  struct Level {
    int entry = 0;
    Fd src, dst, live;
    std::vector<DirEntry> existing;
    std::vector<char> wanted;  // per existing entry: the source has this name
    size_t cursor = 0;
  };

  Status ListExisting(Level& level, const std::string& path) {
    if (os.ReadDir(level.dst.get(), &level.existing) != 0) {
      return SysError("readdir staged " + path, errno);
    }
    std::sort(level.existing.begin(), level.existing.end(),
              [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
    level.wanted.assign(level.existing.size(), 0);
    return Status::Ok();
  }

  // What the reused level holds under `name` (the next source child), or nullptr.
  DirEntry* Existing(Level& level, const std::string& name) {
    auto& ex = level.existing;
    while (level.cursor < ex.size() && ex[level.cursor].name < name) ++level.cursor;
    if (level.cursor == ex.size() || ex[level.cursor].name != name) return nullptr;
    level.wanted[level.cursor] = 1;
    return &ex[level.cursor];
  }

  // Takes whatever the reused level holds under `name` (file, symlink or tree) out of it;
  // *have (from Existing) is cleared so it is taken only once.
  Status ClearExisting(Discards& discards, Level& level, const DirEntry** have,
                       const std::string& name) {
    if (*have == nullptr) return Status::Ok();
    *have = nullptr;
    return discards.Take(level.dst.get(), name);
  }

  Status FinishDir(Job& job, Level& level, Discards& discards) {
    const SrcEntry& e = job.src[static_cast<size_t>(level.entry)];
    for (size_t k = 0; k < level.existing.size(); ++k) {
      if (!level.wanted[k]) {
        DESPOOL_RETURN_IF_ERROR(discards.Take(level.dst.get(), level.existing[k].name));
      }
    }
    // A reused dir may already be right; a fresh one never is.
    struct stat st;
    bool known = !level.existing.empty() && os.Fstat(level.dst.get(), &st) == 0;
    if (!known || (st.st_mode & 07777) != (e.st.st_mode & 07777)) {
      if (os.Fchmod(level.dst.get(), e.st.st_mode & 07777) != 0) {
        return SysError("chmod staged dir " + e.path, errno);
      }
    }
    if (!known || MtimeNs(st) != MtimeNs(e.st)) {
      const struct timespec times[2] = {{0, UTIME_OMIT}, e.st.st_mtim};
      if (os.Futimens(level.dst.get(), times) != 0) {
        return SysError("set mtime of staged dir " + e.path, errno);
      }
    }
    return Status::Ok();
  }

  // Opens a directory of the tree being staged; a reused one is made writable for us (dirs are
  // never shared with the live tree, so this touches nothing live).
  Result<Fd> OpenStagedDir(int at, const std::string& name, bool reused, const std::string& path) {
    DESPOOL_ASSIGN_OR_RETURN(Fd fd, internal::OpenDir(os, at, name));
    struct stat st;
    if (reused && os.Fstat(fd.get(), &st) == 0 && (st.st_mode & S_IRWXU) != S_IRWXU) {
      if (os.Fchmod(fd.get(), (st.st_mode & 07777) | S_IRWXU) != 0) {
        return SysError("chmod staged dir " + path, errno);
      }
    }
    return fd;
  }

  // Builds the staged tree; *cancelled set when the token fired. Starts from the package's spare
  // tree (the tree retired by the previous switch) when there is one, changing only what
  // differs: for a small change this costs a few operations instead of one per file. With
  // threads > 1 copies run on helper threads beside the walk (CopyPool).
  Status Stage(Job& job, int src_root, bool* cancelled) {
    Discards discards(*this, job.d, job.pkg, threads > 1);
    Status s = Status::Ok();
    if (threads <= 1) {
      s = StageWalk(job, src_root, nullptr, discards, cancelled);
    } else {
      CopyPool pool(*this, job, threads - 1, discards);
      s = StageWalk(job, src_root, &pool, discards, cancelled);
      // The walk left no copy running; this surfaces a helper's error or exception (a test's
      // InjectedCrash must stop the refresh as a kill -9 would, whichever thread it hit).
      Status drained = pool.Drain(cancelled);
      pool.FinishWriteback();
      if (s.ok()) s = drained;
    }
    job.spare_prefetch = {};  // stopped and joined on every way out (it writes job.stats)
    Status finished = discards.Finish();
    return s.ok() ? finished : s;
  }

  // The cold-cache hints of prefetch.h for a staging, on a thread that owns its descriptors
  // (none: nothing to hint). When the source scan found its caches cold, the files to copy
  // that the scan did not read ahead itself (RunLocked: all of them on a first install), only
  // up to kPrefetchCopyBytes of them (a full copy reads its source in order anyway, and reading
  // all of it ahead measured slower); when the live walk found the DP's caches cold
  // and StartSparePrefetch did not already start on them, the directories of the base tree
  // (the spare) on kPrefetchWays threads. The counts go to job.stats once the thread is joined
  // (StageWalk joins it when the walk completes; on any other way out the jthread asks it to
  // stop and joins).
  static constexpr std::uint64_t kPrefetchCopyBytes = 64ull << 20;
  static constexpr int kPrefetchWays = 4;
  std::jthread StartPrefetch(Job& job, int src_root, bool from_spare) {
    std::vector<std::string> files;
    if (job.cold_caches && job.prog.bytes_total <= kPrefetchCopyBytes) {
      for (size_t i = 1; i < job.src.size(); ++i) {
        const SrcEntry& e = job.src[i];
        if (e.type != EntryType::kFile || job.link_from[i] != nullptr) continue;
        // The scan read ahead every file to copy but those whose source passed the quick check
        // (copied because the live file was changed in place).
        if (job.files_hinted_in_scan && !SourcePassesQuickCheck(job, e)) continue;
        files.push_back(e.path);
      }
    }
    Os& sys = RealOs();  // hints bypass the injected Os (prefetch.h)
    Fd src, base;
    if (!files.empty()) src = Fd(&sys, ::fcntl(src_root, F_DUPFD_CLOEXEC, 0));
    if (from_spare && job.live_cold && !job.spare_prefetch.joinable()) {
      if (auto dir = internal::OpenDir(sys, job.d.staging.get(), job.staged); dir.ok()) {
        base = std::move(dir).value();
      }
    }
    return StartHints(std::move(src), std::move(files), std::move(base), &job.stats);
  }

  // Called by the live walk as soon as it finds the DP's caches cold: starts listing the
  // spare's directories then, so that those reads overlap the rest of the scan (CPU-bound on
  // cold inodes) instead of waiting for the staging to start (measured: the cold stage took
  // 26-34 ms against 20-22 warm). A staging that does not start from the spare (a kept staged
  // tree is reused) only wasted the reads.
  void StartSparePrefetch(Job& job) {
    if (threads <= 1 || job.spare_prefetch.joinable()) return;
    auto dir = internal::OpenDir(RealOs(), job.d.staging.get(), SpareName(job.pkg));
    if (!dir.ok()) return;  // no spare: nothing to read ahead
    job.spare_prefetch = StartHints({}, {}, std::move(dir).value(), &job.stats);
  }

  // The thread of StartPrefetch and StartSparePrefetch: starts reading `files` below `src`, then
  // lists the directories below `base` (each only with a valid descriptor); none if no thread
  // can be had.
  static std::jthread StartHints(Fd src, std::vector<std::string> files, Fd base,
                                 RefreshStats* stats) {
    if (!src.valid() && !base.valid()) return {};
    try {
      return std::jthread([src = std::move(src), base = std::move(base), files = std::move(files),
                           stats](std::stop_token stop) {
        try {
          if (src.valid()) stats->prefetched_files += internal::PrefetchFiles(src.get(), files, stop);
          if (base.valid()) {
            stats->prefetched_dirs = internal::PrefetchDirectories(base.get(), kPrefetchWays, stop);
          }
        } catch (...) {  // a hint: nothing to report (std::bad_alloc, a thread not started)
        }
      });
    } catch (...) {  // no thread: no hints (the descriptors close with the callable)
      return {};
    }
  }

  Status StageWalk(Job& job, int src_root, CopyPool* pool, Discards& discards, bool* cancelled) {
    int sfd = job.d.staging.get();
    std::string spare = SpareName(job.pkg);
    bool from_spare = os.RenameAt2(sfd, spare.c_str(), sfd, job.staged.c_str(), RENAME_NOREPLACE) == 0;
    if (!from_spare && os.MkdirAt(sfd, job.staged.c_str(), 0700) != 0) {
      return SysError("create staging " + job.staged, errno);
    }
    Checkpoint("staging");
    // With cold caches (the scan found them so) another thread starts reading the files to copy
    // and reads the base tree's directories while the walk begins, which would otherwise wait
    // for each listing and each file's first read in turn. Joined on every way out.
    std::jthread prefetch;
    if ((job.cold_caches || job.live_cold) && threads > 1) {
      prefetch = StartPrefetch(job, src_root, from_spare);
    }
    std::vector<Level> stack;
    // Declared after `stack`, so it runs first on every way out: no copy may still use a
    // level's descriptors when they are closed.
    struct QuiesceOnExit {
      CopyPool* pool;
      ~QuiesceOnExit() {
        if (pool != nullptr) pool->Quiesce();
      }
    } quiesce{pool};
    // A level is finished once its queued copies are (its mtime must be set after its last
    // entry is created; its descriptors stay open until then).
    auto finish = [&](Level& level) -> Status {
      if (pool) {
        DESPOOL_RETURN_IF_ERROR(pool->Drain(cancelled));
        if (*cancelled) return Status::Ok();
        Report(job, Phase::kStage, false);
      }
      return FinishDir(job, level, discards);
    };
    {
      Level root;
      root.entry = 0;
      int raw = os.OpenAt(src_root, ".", kDirFlags, 0);
      if (raw < 0) return SysError("open source", errno);
      root.src = Fd(&os, raw);
      DESPOOL_ASSIGN_OR_RETURN(root.dst, OpenStagedDir(sfd, job.staged, from_spare, "."));
      if (from_spare) DESPOOL_RETURN_IF_ERROR(ListExisting(root, "."));
      if (job.live_exists) {
        raw = os.OpenAt(job.live.get(), ".", kDirFlags, 0);
        if (raw < 0) return SysError("open live", errno);
        root.live = Fd(&os, raw);
      }
      stack.push_back(std::move(root));
    }
    job.next.entries.clear();
    job.next.entries.reserve(job.src.size());
    {
      const SrcEntry& r = job.src[0];
      job.next.entries.push_back(ManifestEntry{".", EntryType::kDir, r.st.st_mode & 07777,
                                               MtimeNs(r.st), 0, 0, {}});
    }
    for (size_t i = 1; i < job.src.size(); ++i) {
      if (job.cancel->cancelled()) {
        *cancelled = true;
        return Status::Ok();
      }
      const SrcEntry& e = job.src[i];
      while (stack.back().entry != e.parent) {
        DESPOOL_RETURN_IF_ERROR(finish(stack.back()));
        if (*cancelled) return Status::Ok();
        stack.pop_back();
      }
      Level& L = stack.back();
      const DirEntry* have = Existing(L, e.name);
      ManifestEntry me{e.path, e.type, e.st.st_mode & 07777, MtimeNs(e.st), 0, 0, {}};
      switch (e.type) {
        case EntryType::kDir: {
          bool reuse = have != nullptr && have->type == DT_DIR;
          if (!reuse) {
            DESPOOL_RETURN_IF_ERROR(ClearExisting(discards, L, &have, e.name));
            if (os.MkdirAt(L.dst.get(), e.name.c_str(), 0700) != 0) {
              return SysError("mkdir staged " + e.path, errno);
            }
          }
          Level sub;
          sub.entry = static_cast<int>(i);
          int raw = os.OpenAt(L.src.get(), e.name.c_str(), kDirFlags, 0);
          if (raw < 0) {
            if (errno == ELOOP || errno == ENOTDIR || errno == ENOENT) return SourceChanged(e.path);
            return SysError("open source dir " + e.path, errno);
          }
          sub.src = Fd(&os, raw);
          DESPOOL_ASSIGN_OR_RETURN(sub.dst, OpenStagedDir(L.dst.get(), e.name, reuse, e.path));
          if (reuse) DESPOOL_RETURN_IF_ERROR(ListExisting(sub, e.path));
          if (L.live.valid()) {
            raw = os.OpenAt(L.live.get(), e.name.c_str(), kDirFlags, 0);
            if (raw >= 0) sub.live = Fd(&os, raw);
          }
          stack.push_back(std::move(sub));
          break;
        }
        case EntryType::kSymlink: {
          me.mode = 0;
          me.target = e.target;
          bool keep = false;
          if (have != nullptr && have->type == DT_LNK) {
            char buf[PATH_MAX + 1];
            ssize_t n = os.ReadlinkAt(L.dst.get(), e.name.c_str(), buf, sizeof buf);
            struct stat st;
            keep = n >= 0 && std::string(buf, static_cast<size_t>(n)) == e.target &&
                   os.FstatAt(L.dst.get(), e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                   MtimeNs(st) == MtimeNs(e.st);
          }
          if (keep) break;
          DESPOOL_RETURN_IF_ERROR(ClearExisting(discards, L, &have, e.name));
          if (os.SymlinkAt(e.target.c_str(), L.dst.get(), e.name.c_str()) != 0) {
            return SysError("symlink staged " + e.path, errno);
          }
          const struct timespec times[2] = {{0, UTIME_OMIT}, e.st.st_mtim};
          if (os.UtimensAt(L.dst.get(), e.name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) {
            return SysError("set mtime of staged symlink " + e.path, errno);
          }
          break;
        }
        case EntryType::kFile: {
          me.size = static_cast<std::uint64_t>(e.st.st_size);
          const ManifestEntry* old = L.live.valid() ? job.link_from[i] : nullptr;
          bool link = old != nullptr;
          if (link && job.opt->checksum && job.repair_of == nullptr) {
            // Content comparison for sources whose mtimes cannot be trusted.
            int raw = os.OpenAt(L.src.get(), e.name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
            if (raw < 0) return SourceChanged(e.path);
            Fd f(&os, raw);
            DESPOOL_ASSIGN_OR_RETURN(std::uint64_t h, HashFd(f.get(), "source " + e.path, job.buf));
            link = old != nullptr && h == old->hash;
          }
          if (link) {
            const struct stat& ls = *job.live_of[i];
            bool linked = false;
            if (have != nullptr && have->type == DT_REG && have->ino == ls.st_ino) {
              // The spare already holds the live file itself (same inode, as readdir reports it:
              // staging is one filesystem with no mount points inside): nothing to do.
              linked = true;
            }
            if (!linked) {
              DESPOOL_RETURN_IF_ERROR(ClearExisting(discards, L, &have, e.name));
              if (os.LinkAt(L.live.get(), e.name.c_str(), L.dst.get(), e.name.c_str(), 0) == 0) {
                linked = true;
              } else if (errno != ENOENT && errno != EMLINK && errno != EXDEV && errno != EPERM) {
                return SysError("link " + e.path, errno);
              }
            }
            if (linked) {
              me.hash = old->hash;
              job.staged_inodes.insert(ls.st_ino);
              job.stats.files_linked++;
              job.stats.bytes_linked += me.size;
              job.prog.files_done++;
              Report(job, Phase::kStage, false);
              break;
            }
          }
          if (pool) {
            // The stale entry is removed by the copy task too (unlinking a file costs about as
            // much as creating one); the hash is filled in when the copy is drained.
            pool->Add(CopyTask{L.src.get(), L.dst.get(), i, job.next.entries.size(),
                               have != nullptr});
            break;
          }
          DESPOOL_RETURN_IF_ERROR(ClearExisting(discards, L, &have, e.name));
          ino_t ino = 0;
          DESPOOL_RETURN_IF_ERROR(CopyFile(job, L.src.get(), L.dst.get(), e, job.buf, true,
                                           &me.hash, &ino, cancelled));
          if (*cancelled) return Status::Ok();
          DESPOOL_RETURN_IF_ERROR(CheckRepairContent(job, e, me.hash));
          CountCopy(job, e, ino);
          Report(job, Phase::kStage, false);
          break;
        }
      }
      job.next.entries.push_back(std::move(me));
    }
    while (!stack.empty()) {
      DESPOOL_RETURN_IF_ERROR(finish(stack.back()));
      if (*cancelled) return Status::Ok();
      stack.pop_back();
    }
    SortEntries(&job.next.entries);
    // Done by now, unless the tree is far larger.
    if (prefetch.joinable()) prefetch.join();
    if (job.spare_prefetch.joinable()) job.spare_prefetch.join();
    return Status::Ok();
  }

  // Re-stats every source entry: anything changed since the scan (including files we linked
  // rather than copied) makes the staged tree untrustworthy. With threads > 1 the subtrees of
  // the top-level entries are re-checked on that many threads: this runs beside the syncfs,
  // which has little left to do once the copies' writeback was started during the staging
  // (engine_bench's warm steady state: syncfs ~1.5 ms, a one-thread re-check of 10,100
  // entries ~11 ms). The error is the one the one-thread walk would report first.
  Status RecheckSource(const Job& job, int src_root) {
    std::vector<std::size_t> starts;  // the top-level entries, in order
    for (std::size_t i = 1; i < job.src.size(); ++i) {
      if (job.src[i].parent == 0) starts.push_back(i);
    }
    const auto statuses = internal::RunOnThreads(starts.size(), threads, [&](std::size_t k) {
      const std::size_t end = k + 1 < starts.size() ? starts[k + 1] : job.src.size();
      return RecheckRange(job, src_root, starts[k], end);
    });
    for (const auto& st : statuses) {
      if (!st.ok()) return st;
    }
    return Status::Ok();
  }

  // RecheckSource for the entries [begin, end): one top-level entry and its subtree.
  Status RecheckRange(const Job& job, int src_root, std::size_t begin, std::size_t end) {
    std::vector<std::pair<int, Fd>> stack;  // entry index, its open source dir (the root: src_root)
    stack.emplace_back(0, Fd());
    auto dir_fd = [&] { return stack.back().first == 0 ? src_root : stack.back().second.get(); };
    for (std::size_t i = begin; i < end; ++i) {
      const SrcEntry& e = job.src[i];
      while (stack.back().first != e.parent) stack.pop_back();
      struct stat st;
      if (os.FstatAt(dir_fd(), e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        return SourceChanged(e.path);
      }
      bool same = e.type == EntryType::kDir
                      ? (st.st_ino == e.st.st_ino && st.st_mode == e.st.st_mode &&
                         MtimeNs(st) == MtimeNs(e.st))
                      : SameFile(st, e.st);
      if (!same) return SourceChanged(e.path);
      if (e.type == EntryType::kDir) {
        int raw = os.OpenAt(dir_fd(), e.name.c_str(), kDirFlags, 0);
        if (raw < 0) return SourceChanged(e.path);
        stack.emplace_back(static_cast<int>(i), Fd(&os, raw));
      }
    }
    return Status::Ok();
  }

  // Can a staged tree kept from a deferral be used as is? It must describe the same source
  // state (entry by entry, metadata) and still be intact on disk.
  bool CanReuse(Job& job, const Manifest& staged_manifest) {
    if (job.opt->checksum || job.repair_of != nullptr) return false;
    if (staged_manifest.version != job.version || staged_manifest.source != job.source ||
        staged_manifest.package != job.pkg ||
        staged_manifest.entries.size() != job.src.size()) {
      return false;
    }
    for (const auto& e : job.src) {
      auto i = staged_manifest.Find(e.path);
      if (i < 0) return false;
      const auto& m = staged_manifest.entries[static_cast<size_t>(i)];
      if (m.type != e.type || m.mtime_ns != MtimeNs(e.st)) return false;
      if (e.type != EntryType::kSymlink && m.mode != (e.st.st_mode & 07777)) return false;
      if (e.type == EntryType::kFile && m.size != static_cast<std::uint64_t>(e.st.st_size)) {
        return false;
      }
      if (e.type == EntryType::kSymlink && m.target != e.target) return false;
    }
    auto dir = internal::OpenDir(os, job.d.staging.get(), job.staged);
    if (!dir.ok()) return false;
    std::unordered_map<std::string, struct stat> stats;
    if (!internal::WalkTree(os, dir->get(), &stats).ok()) return false;
    if (stats.size() + 1 != staged_manifest.entries.size()) return false;
    for (const auto& m : staged_manifest.entries) {
      if (m.path == ".") continue;
      auto it = stats.find(m.path);
      if (it == stats.end()) return false;
      const struct stat& st = it->second;
      bool ok = m.type == EntryType::kDir    ? S_ISDIR(st.st_mode)
                : m.type == EntryType::kFile ? S_ISREG(st.st_mode)
                                             : S_ISLNK(st.st_mode);
      if (!ok || (m.type != EntryType::kDir && MtimeNs(st) != m.mtime_ns)) return false;
      if (m.type == EntryType::kFile) {
        if (static_cast<std::uint64_t>(st.st_size) != m.size || (st.st_mode & 07777) != m.mode) {
          return false;
        }
        job.staged_inodes.insert(st.st_ino);
      }
    }
    return true;
  }

  RefreshOutcome RunLocked(Job& job) {
    auto t0 = Clock::now();
    RefreshOutcome out;
    job.staged = StagedName(job.pkg, job.version);

    // What is live?
    struct stat live_st;
    if (os.FstatAt(job.d.root.get(), job.pkg.c_str(), &live_st, AT_SYMLINK_NOFOLLOW) == 0) {
      if (!S_ISDIR(live_st.st_mode)) {
        return ErrorOutcome(MakeError(ErrorCode::kFailedPrecondition,
                                      "ROOT/" + job.pkg + " exists and is not a directory"));
      }
      job.live_exists = true;
      auto live = internal::OpenDir(os, job.d.root.get(), job.pkg);
      if (!live.ok()) return ErrorOutcome(live.take_error());
      job.live = std::move(live).value();
    } else if (errno != ENOENT) {
      return ErrorOutcome(SysError("stat ROOT/" + job.pkg, errno));
    }

    // Scan the source, and walk the live tree beside it (both only stat and read directories).
    Report(job, Phase::kScan);
    int raw = os.OpenAt(AT_FDCWD, job.source.c_str(), O_RDONLY | O_DIRECTORY, 0);
    if (raw < 0) return ErrorOutcome(SysError("open source " + job.source, errno));
    Fd src_root(&os, raw);
    Result<std::vector<SrcEntry>> scanned = MakeError(ErrorCode::kInternal, "not scanned");
    // Cold, the files the quick check already says will be copied (not in the installed manifest,
    // or another size, mtime or mode) start being read as the scan finds them: the scan is
    // CPU-bound on cold inodes for tens of ms, the disk all but idle, and the copies would
    // otherwise wait for those reads (at ~380 MB/s here, 9 MB of changed files took most of
    // the cold staging). Only for an incremental refresh: a first install copies everything, in
    // order, and reading all of a large copy ahead measured slower (StartPrefetch). A change
    // larger than kPrefetchCopyBytes gets the first that much the scan finds read ahead (not
    // measured apart; files are hinted, not read, so at worst the hints were wasted).
    std::atomic<bool> scan_hints{false}, no_openat2{false};
    std::atomic<std::uint64_t> hinted_bytes{0}, hinted_files{0};
    internal::ColdFileHook on_cold_file;
    if (threads > 1 && (job.old || job.repair_of != nullptr)) {
      on_cold_file = [&](const SrcEntry& e) {
        scan_hints.store(true, std::memory_order_relaxed);
        if (no_openat2.load(std::memory_order_relaxed) || SourcePassesQuickCheck(job, e)) return;
        const auto size = static_cast<std::uint64_t>(e.st.st_size);
        if (hinted_bytes.fetch_add(size, std::memory_order_relaxed) + size > kPrefetchCopyBytes) return;
        switch (internal::PrefetchFile(src_root.get(), e.path)) {
          case internal::FileHint::kStarted:
            hinted_files.fetch_add(1, std::memory_order_relaxed);
            break;
          case internal::FileHint::kNoOpenat2:
            no_openat2.store(true, std::memory_order_relaxed);
            break;
          case internal::FileHint::kNotStarted:  // a passing failure (EMFILE, gone): no retry
            break;
        }
      };
    }
    Status walked = Beside(
        [&]() -> Status {
          if (!job.live_exists) return Status::Ok();
          if (job.old) job.live_stats.reserve(job.old->entries.size());
          return internal::WalkTreeOnThreads(os, job.live.get(), &job.live_stats, ColdWalkers(),
                                             &job.live_cold, [&] { StartSparePrefetch(job); });
        },
        [&] {
          scanned = internal::ScanSource(os, src_root.get(), ColdWalkers(), &job.cold_caches,
                                         job.old ? job.old->entries.size() + 1 : 0, on_cold_file);
        });
    job.files_hinted_in_scan = scan_hints.load();
    job.stats.prefetched_files = hinted_files.load();
    if (!walked.ok()) return ErrorOutcome(walked.take_error());
    if (!scanned.ok()) return ErrorOutcome(scanned.take_error());
    job.src = std::move(scanned).value();
    job.stats.cold_caches = job.cold_caches || job.live_cold;
    if (job.repair_of != nullptr) {
      if (auto s = CheckSourceMatches(job); !s.ok()) return ErrorOutcome(s.take_error());
    }
    job.next.package = job.pkg;
    job.next.version = job.version;
    job.next.source = job.source;
    job.stats.entries_total = job.src.size();
    for (const auto& e : job.src) job.stats.files_total += e.type == EntryType::kFile;
    // Each source entry's live counterpart, looked up once; regular files of the live tree that
    // no source path matches are the ones the switch removes.
    job.live_of.assign(job.src.size(), nullptr);
    std::uint64_t live_files_kept = 0;
    if (!job.live_stats.empty()) {
      for (const auto& [path, st] : job.live_stats) job.live_files += S_ISREG(st.st_mode);
      for (size_t i = 0; i < job.src.size(); ++i) {
        auto it = job.live_stats.find(job.src[i].path);
        if (it == job.live_stats.end()) continue;
        job.live_of[i] = &it->second;
        live_files_kept += S_ISREG(it->second.st_mode);
      }
    }
    job.stats.files_removed = job.live_files - live_files_kept;
    job.prog.files_total = job.stats.files_total;
    auto t_scan = Clock::now();
    job.stats.scan = t_scan - t0;

    // A staged tree kept from a deferral?
    bool reused = false;
    {
      auto kept = ReadManifest(job.d.staging.get(), job.staged + ".manifest");
      if (kept.ok() && kept->has_value() && CanReuse(job, **kept)) {
        job.spare_prefetch = {};  // no staging from the spare: stop it (it writes job.stats)
        job.stats.prefetched_dirs = 0;  // what it listed will not be used
        job.next = std::move(**kept);
        reused = true;
        job.staged_complete = true;
        job.stats.reused_staging = true;
        for (const auto& m : job.next.entries) {
          if (m.type != EntryType::kFile) continue;
          auto it = job.live_stats.find(m.path);
          if (it != job.live_stats.end() && job.staged_inodes.count(it->second.st_ino)) {
            job.stats.files_linked++;
            job.stats.bytes_linked += m.size;
          }
        }
        job.prog.files_done = job.stats.files_total;
      } else {
        job.staged_inodes.clear();
        // An unusable staged tree (source moved on) still makes a good spare.
        std::string m = job.staged + ".manifest";
        if (os.UnlinkAt(job.d.staging.get(), m.c_str(), 0) != 0 && errno != ENOENT) {
          return ErrorOutcome(SysError("remove " + m, errno));
        }
        if (auto s = KeepAsSpare(job.d, job.pkg, job.d.staging.get(), job.staged); !s.ok()) {
          return ErrorOutcome(s.take_error());
        }
      }
    }

    if (!reused) {
      // Plan, check free space, stage.
      job.link_from.assign(job.src.size(), nullptr);
      std::uint64_t copy_bytes = 0, new_inodes = 0;
      for (size_t i = 0; i < job.src.size(); ++i) {
        const SrcEntry& e = job.src[i];
        if (e.type == EntryType::kFile) {
          job.link_from[i] = PlanLink(job, i);
          if (job.link_from[i] == nullptr) {
            copy_bytes += (static_cast<std::uint64_t>(e.st.st_size) + 4095) & ~std::uint64_t{4095};
            new_inodes++;
          }
        } else {
          new_inodes++;
        }
      }
      job.prog.bytes_total = copy_bytes;
      struct statvfs vfs;
      if (os.Fstatvfs(job.d.staging.get(), &vfs) != 0) {
        return ErrorOutcome(SysError("statvfs staging", errno));
      }
      std::uint64_t avail = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
      if (avail < copy_bytes + job.opt->reserve_bytes ||
          (vfs.f_files > 0 && vfs.f_favail < new_inodes + 16)) {
        return ErrorOutcome(MakeError(
            ErrorCode::kResourceExhausted,
            "not enough free space on the DP: need " + std::to_string(copy_bytes) +
                " bytes + reserve " + std::to_string(job.opt->reserve_bytes) + " and " +
                std::to_string(new_inodes) + " inodes, have " + std::to_string(avail) +
                " bytes and " + std::to_string(vfs.f_favail) + " inodes"));
      }
      Report(job, Phase::kStage);
      bool cancelled = false;
      Status s = Stage(job, src_root.get(), &cancelled);
      if (cancelled) return Cancelled(job);
      if (!s.ok()) return Abandon(job, s.take_error());
      if (job.repair_of != nullptr && job.next.entries != job.repair_of->entries) {
        return Abandon(job, MakeError(ErrorCode::kFailedPrecondition,
                                      "source no longer matches the manifest of version " +
                                          std::to_string(job.version)));
      }
      auto t_stage = Clock::now();
      job.stats.stage = t_stage - t_scan;

      // Durability of the staged tree, then its manifest (which marks it complete). One syncfs
      // of the DP's filesystem writes back every file and directory staged above (data,
      // inodes, entries) and the manifest's temp file, and reports any writeback error since
      // the staging fd was opened (kernel >= 5.8), where one fsync per file and per directory
      // would cost a syscall and a device flush each. Only after it returned is the manifest
      // renamed into place and the staging dir fsynced (that fsync also flushes the device
      // cache after the syncfs writes completed): a staged tree that a power loss could leave
      // partial never has a manifest, so it is never complete, journaled or swapped into live.
      // Beside the syncfs the source is re-checked: anything changed since the scan (including
      // files linked rather than copied) makes the staged tree untrustworthy.
      Report(job, Phase::kSync);
      const std::string manifest = job.staged + ".manifest", manifest_tmp = manifest + ".tmp";
      if (auto w = internal::WriteFileUnsynced(os, job.d.staging.get(), manifest_tmp,
                                               SerializeManifest(job.next));
          !w.ok()) {
        return Abandon(job, w.take_error());
      }
      Status synced = Status::Ok();
      Status rechecked = Beside([&] { return RecheckSource(job, src_root.get()); },
                                [&] {
                                  if (os.Syncfs(job.d.staging.get()) != 0) {
                                    synced = SysError("syncfs staging", errno);
                                  }
                                });
      if (!rechecked.ok()) return Abandon(job, rechecked.take_error());
      if (!synced.ok()) return Abandon(job, synced.take_error());
      Checkpoint("staged");
      if (os.RenameAt2(job.d.staging.get(), manifest_tmp.c_str(), job.d.staging.get(),
                       manifest.c_str(), 0) != 0) {
        return Abandon(job, SysError("rename " + manifest_tmp, errno));
      }
      if (os.Fsync(job.d.staging.get()) != 0) {
        return Abandon(job, SysError("fsync staging", errno));
      }
      job.staged_complete = true;
      job.stats.sync = Clock::now() - t_stage;
    }

    // In-use check: files the switch would replace or remove (or any file, if asked).
    auto t_check = Clock::now();
    Report(job, Phase::kInUseCheck);
    if (job.cancel->cancelled()) return Cancelled(job);
    if (job.live_exists && !job.opt->force) {
      std::vector<std::string> candidates;
      for (const auto& [path, st] : job.live_stats) {
        if (!S_ISREG(st.st_mode)) continue;
        if (job.opt->any_open_blocks || !job.staged_inodes.count(st.st_ino)) {
          candidates.push_back(path);
        }
      }
      std::sort(candidates.begin(), candidates.end());
      if (!candidates.empty()) {
        Result<InUseReport> report = MakeError(ErrorCode::kInternal, "no probe");
        {
          std::lock_guard lock(probe_mu);
          report = probe->Check(job.live.get(), candidates);
        }
        job.stats.in_use_check = Clock::now() - t_check;
        if (!report.ok()) {
          Error e = report.take_error();
          e.message = "in-use check failed: " + e.message;
          e.code = ErrorCode::kUnavailable;  // never "not in use": retry later
          if (!job.opt->keep_staged_on_defer) (void)RemoveStaged(job);
          RefreshOutcome o = ErrorOutcome(std::move(e));
          o.stats = job.stats;
          return o;
        }
        if (!report->complete || !report->in_use.empty()) {
          RefreshOutcome o;
          o.kind = OutcomeKind::kDeferred;
          o.in_use = std::move(report).value();
          o.suggested_delay = job.opt->defer_delay;
          o.installed_version = job.old ? std::optional(job.old->version) : std::nullopt;
          o.stats = job.stats;
          if (!o.in_use.complete) {
            o.message = "in-use check incomplete: " + o.in_use.incomplete_reason;
          } else {
            o.message = std::to_string(o.in_use.in_use.size()) + " file(s) in use, first: " +
                        o.in_use.in_use.front();
          }
          o.error = MakeError(ErrorCode::kUnavailable, o.message);
          if (!job.opt->keep_staged_on_defer) (void)RemoveStaged(job);
          Log()->info("refresh deferred package={} version={} reason={}", job.pkg, job.version,
                      o.message);
          return o;
        }
      }
    }
    job.stats.in_use_check = Clock::now() - t_check;
    if (job.cancel->cancelled()) return Cancelled(job);
    Checkpoint("checked");
    job.live.Reset();  // hold nothing of the old tree open across the swap

    // Switch.
    auto t_switch = Clock::now();
    Report(job, Phase::kSwitch);
    struct stat staged_st;
    if (os.FstatAt(job.d.staging.get(), job.staged.c_str(), &staged_st, AT_SYMLINK_NOFOLLOW) != 0) {
      return ErrorOutcome(SysError("stat staged tree", errno));
    }
    JournalRecord j{job.pkg, job.version, job.staged, static_cast<std::uint64_t>(staged_st.st_dev),
                    static_cast<std::uint64_t>(staged_st.st_ino)};
    if (auto s = internal::WriteFileAtomic(os, job.d.journal.get(), JournalFile(job.pkg),
                                           j.Serialize());
        !s.ok()) {
      return ErrorOutcome(s.take_error());
    }
    Checkpoint("journaled");
    unsigned flags = job.live_exists ? RENAME_EXCHANGE : RENAME_NOREPLACE;
    if (os.RenameAt2(job.d.staging.get(), job.staged.c_str(), job.d.root.get(), job.pkg.c_str(),
                     flags) != 0) {
      int err = errno;
      Error e = SysError("swap staged tree into ROOT/" + job.pkg, err);
      if (err == EINVAL && job.live_exists) {
        e.code = ErrorCode::kFailedPrecondition;
        e.message += " (the filesystem lacks RENAME_EXCHANGE)";
      } else if (err == EEXIST) {
        e.code = ErrorCode::kUnavailable;
      }
      // Nothing was swapped: drop the intent (the journal roll-back would do the same).
      if (os.UnlinkAt(job.d.journal.get(), JournalFile(job.pkg).c_str(), 0) == 0) {
        os.Fsync(job.d.journal.get());
      }
      return ErrorOutcome(std::move(e));
    }
    RefreshOutcome done;
    done.kind = OutcomeKind::kApplied;
    done.installed_version = job.version;
    done.message = "applied version " + std::to_string(job.version);
    Status commit = Status::Ok();
    if (os.Fsync(job.d.root.get()) != 0) commit = SysError("fsync DP root", errno);
    if (commit.ok() && job.live_exists && os.Fsync(job.d.staging.get()) != 0) {
      commit = SysError("fsync staging", errno);
    }
    if (commit.ok()) {
      Checkpoint("exchanged");
      if (os.RenameAt2(job.d.staging.get(), (job.staged + ".manifest").c_str(), job.d.state.get(),
                       ManifestFile(job.pkg).c_str(), 0) != 0) {
        commit = SysError("commit manifest", errno);
      } else if (os.Fsync(job.d.state.get()) != 0) {
        commit = SysError("fsync state", errno);
      }
    }
    if (!commit.ok()) {
      // The new version is live; finish through the journal (roll forward). If even that fails
      // the journal stays and the next Refresh/Recover of this package completes it.
      Status rolled = RollJournal(job.d, job.pkg);
      if (!rolled.ok()) {
        RefreshOutcome o = ErrorOutcome(MakeError(
            ErrorCode::kIo, "version " + std::to_string(job.version) +
                                " is live but committing it failed (recovery will finish it): " +
                                commit.error().message));
        o.installed_version = job.version;
        return o;
      }
    }
    Checkpoint("committed");
    job.stats.switch_time = Clock::now() - t_switch;

    // Retire the old tree (now at the staged name).
    auto t_retire = Clock::now();
    Report(job, Phase::kRetire);
    if (job.live_exists) {
      // The old tree becomes the spare: the next staging starts from it, so retiring costs one
      // rename instead of an unlink per file (falls back to deleting it).
      if (auto s = KeepAsSpare(job.d, job.pkg, job.d.staging.get(), job.staged); !s.ok()) {
        Log()->warn("retiring the old tree failed (cleaned later) package={} error={}", job.pkg,
                    s.error().ToString());
      }
    }
    if (os.UnlinkAt(job.d.journal.get(), JournalFile(job.pkg).c_str(), 0) != 0 && errno != ENOENT) {
      Log()->warn("could not remove journal package={} errno={}", job.pkg, errno);
    }
    if (!job.live_exists && seed_spare) {
      // A first install retired no tree: give the next refresh a spare all the same.
      if (auto s = SeedSpare(job); !s.ok()) {
        Log()->warn("seeding the spare tree failed (the next refresh links every file) "
                    "package={} error={}",
                    job.pkg, s.error().ToString());
      }
    }
    Checkpoint("retired");
    job.stats.retire = Clock::now() - t_retire;
    job.stats.total = Clock::now() - t0;
    done.stats = job.stats;
    job.prog.files_done = job.prog.files_total;
    Report(job, Phase::kDone);
    Log()->info(
        "refresh applied package={} version={} files={} copied={} linked={} removed={} "
        "bytes_copied={} ms={} cold_caches={}",
        job.pkg, job.version, job.stats.files_total, job.stats.files_copied,
        job.stats.files_linked, job.stats.files_removed, job.stats.bytes_copied,
        std::chrono::duration_cast<std::chrono::milliseconds>(job.stats.total).count(),
        job.stats.cold_caches);
    return done;
  }

  // After a first install (committed, journal gone): gives the package the spare an incremental
  // switch would have retired, so that the next staging finds every unchanged file already in
  // place (the same inode as the live file: kept as is) instead of linking each one from the
  // live tree. A hard-link clone of the live tree, walked with directory descriptors along the
  // scanned entries (job.src, which the committed manifest describes): directories created
  // 0700 (staging sets modes and mtimes), regular files hard-linked from the live ones,
  // symlinks left to staging (checking one it found costs it as much as creating it). Built
  // under SeedingName and renamed to the spare without replacing one (a spare that exists is
  // kept and ours dropped); nothing is fsynced: a spare may hold anything, staging re-checks
  // every entry, so a power loss can at worst cost it entries. A crash leaves the temporary
  // tree, which the staging cleanup removes. On failure the partial tree is removed here; the
  // caller only logs (the refresh has already succeeded). Calls for N files in D directories
  // below the root, De of them not empty: FstatAt, MkdirAt, 2 OpenAt (the roots), D MkdirAt,
  // 2 De OpenAt, N LinkAt, RenameAt2; N + D + 2 De + 5 in all (and 2 De + 2 closes).
  Status SeedSpare(Job& job) {
    const int sfd = job.d.staging.get();
    const std::string spare = SpareName(job.pkg), seeding = SeedingName(job.pkg);
    struct stat st;
    if (os.FstatAt(sfd, spare.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return Status::Ok();
    if (errno != ENOENT) return SysError("stat " + spare, errno);
    if (os.MkdirAt(sfd, seeding.c_str(), 0700) != 0) return SysError("create " + seeding, errno);
    Status s = SeedTree(job, seeding);
    if (s.ok()) {
      if (os.RenameAt2(sfd, seeding.c_str(), sfd, spare.c_str(), RENAME_NOREPLACE) == 0) {
        return Status::Ok();
      }
      // EEXIST: a spare appeared meanwhile; keep it, drop ours.
      if (errno != EEXIST) s = SysError("rename " + seeding + " to " + spare, errno);
    }
    Status removed = internal::RemoveTree(os, sfd, seeding);
    if (s.ok()) return removed;
    if (removed.ok()) return s;
    Error e = s.take_error();
    e.message += " (removing the partial tree failed too, left to the next cleanup: " +
                 removed.error().message + ")";
    return e;
  }

  Status SeedTree(Job& job, const std::string& seeding) {
    struct Level {
      int entry = 0;
      Fd live, seed;
    };
    std::vector<Level> stack;
    {
      Level root;
      DESPOOL_ASSIGN_OR_RETURN(root.live, internal::OpenDir(os, job.d.root.get(), job.pkg));
      DESPOOL_ASSIGN_OR_RETURN(root.seed, internal::OpenDir(os, job.d.staging.get(), seeding));
      stack.push_back(std::move(root));
    }
    for (size_t i = 1; i < job.src.size(); ++i) {
      const SrcEntry& e = job.src[i];
      while (stack.back().entry != e.parent) stack.pop_back();
      const int live_fd = stack.back().live.get(), seed_fd = stack.back().seed.get();
      switch (e.type) {
        case EntryType::kDir: {
          if (os.MkdirAt(seed_fd, e.name.c_str(), 0700) != 0) {
            return SysError("mkdir spare " + e.path, errno);
          }
          // Depth-first order: a directory's first entry, if any, comes right after it. An
          // empty one need not be opened.
          if (i + 1 == job.src.size() || job.src[i + 1].parent != static_cast<int>(i)) break;
          Level sub;
          sub.entry = static_cast<int>(i);
          DESPOOL_ASSIGN_OR_RETURN(sub.live, internal::OpenDir(os, live_fd, e.name));
          DESPOOL_ASSIGN_OR_RETURN(sub.seed, internal::OpenDir(os, seed_fd, e.name));
          stack.push_back(std::move(sub));
          break;
        }
        case EntryType::kFile:
          if (os.LinkAt(live_fd, e.name.c_str(), seed_fd, e.name.c_str(), 0) != 0) {
            return SysError("link spare " + e.path, errno);
          }
          break;
        case EntryType::kSymlink:
          break;
      }
    }
    return Status::Ok();
  }

  // Repair: the source must still be what the manifest says (metadata; content is checked as
  // files are copied).
  Status CheckSourceMatches(Job& job) {
    const Manifest& m = *job.repair_of;
    auto mismatch = [&](const std::string& path) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "source " + job.source + " no longer matches the manifest of version " +
                           std::to_string(m.version) + ": " + path);
    };
    if (m.entries.size() != job.src.size()) return mismatch("entry count differs");
    for (const auto& e : job.src) {
      auto i = m.Find(e.path);
      if (i < 0) return mismatch(e.path);
      const auto& me = m.entries[static_cast<size_t>(i)];
      if (me.type != e.type || me.mtime_ns != MtimeNs(e.st)) return mismatch(e.path);
      if (e.type == EntryType::kFile &&
          (me.size != static_cast<std::uint64_t>(e.st.st_size) || me.mode != (e.st.st_mode & 07777))) {
        return mismatch(e.path);
      }
      if (e.type == EntryType::kDir && me.mode != (e.st.st_mode & 07777)) return mismatch(e.path);
      if (e.type == EntryType::kSymlink && me.target != e.target) return mismatch(e.path);
    }
    return Status::Ok();
  }

  // Common prologue: open, lock, recover this package. Fills job.d and job.old.
  Result<Fd> Prepare(Job& job, const std::string& dp_root) {
    DESPOOL_ASSIGN_OR_RETURN(job.d, OpenDirs(dp_root, true));
    DESPOOL_ASSIGN_OR_RETURN(Fd lock, Lock(job.d, job.pkg, job.opt->lock_wait, job.cancel));
    DESPOOL_ASSIGN_OR_RETURN(auto installed, PeekInstalled(job.d, job.pkg));
    std::optional<std::uint64_t> keep;
    if (!installed || *installed < job.version) keep = job.version;
    DESPOOL_RETURN_IF_ERROR(RecoverPackage(job.d, job.pkg, keep));
    auto old = ReadManifest(job.d.state.get(), ManifestFile(job.pkg));
    if (old.ok()) {
      job.old = std::move(old).value();
    } else {
      // An unreadable manifest: treat the live tree as unmanaged (full copy, no links).
      Log()->warn("ignoring unreadable manifest package={} error={}", job.pkg,
                  old.error().ToString());
    }
    return lock;
  }

  RefreshOutcome Refresh(const RefreshRequest& req, const ProgressFn& progress,
                         const CancelToken& cancel) {
    for (const Status& s : {ValidatePackageId(req.package_id), ValidateVersion(req.version),
                            ValidateSourcePath(req.source_dir)}) {
      if (!s.ok()) return ErrorOutcome(MakeError(ErrorCode::kInvalidArgument, s.error().message));
    }
    // Idempotence first, read-only: an installed version >= the request touches nothing.
    {
      auto root = OpenRoot(req.dp_root);
      if (!root.ok()) return ErrorOutcome(root.take_error());
      Dirs d;
      d.root = std::move(root).value();
      if (OpenMeta(&d, false).ok()) {
        auto installed = PeekInstalled(d, req.package_id);
        if (installed.ok() && installed->has_value() && **installed >= req.version) {
          return UpToDate(**installed);
        }
      }
    }
    if (cancel.cancelled()) {
      RefreshOutcome o;
      o.kind = OutcomeKind::kCancelled;
      o.message = "cancelled before start";
      o.error = MakeError(ErrorCode::kAborted, o.message);
      return o;
    }
    Job job;
    job.pkg = req.package_id;
    job.version = req.version;
    job.source = req.source_dir;
    job.opt = &req.options;
    job.progress = &progress;
    job.cancel = &cancel;
    auto lock = Prepare(job, req.dp_root);
    if (!lock.ok()) {
      if (lock.error().code == ErrorCode::kAborted) return Cancelled(job);
      return ErrorOutcome(lock.take_error());
    }
    if (job.old && job.old->version >= job.version) return UpToDate(job.old->version);
    return RunLocked(job);
  }

  static RefreshOutcome UpToDate(std::uint64_t installed) {
    RefreshOutcome o;
    o.kind = OutcomeKind::kUpToDate;
    o.installed_version = installed;
    o.message = "installed version " + std::to_string(installed) + " is up to date";
    return o;
  }

  Result<VerifyReport> VerifyLocked(Dirs& d, const Manifest& m, const std::string& pkg,
                                    const VerifyOptions& options) {
    VerifyReport r;
    r.version = m.version;
    IoBuffer buf;
    std::unordered_map<std::string, struct stat> live;
    auto live_fd = internal::OpenDir(os, d.root.get(), pkg);
    if (!live_fd.ok()) {
      if (live_fd.error().code != ErrorCode::kNotFound) return live_fd.take_error();
      for (const auto& e : m.entries) {
        if (e.path != ".") r.missing.push_back(e.path);
      }
      return r;
    }
    DESPOOL_RETURN_IF_ERROR(internal::WalkTree(os, live_fd->get(), &live));
    for (const auto& e : m.entries) {
      if (e.path == ".") continue;
      auto it = live.find(e.path);
      if (it == live.end()) {
        r.missing.push_back(e.path);
        continue;
      }
      const struct stat& st = it->second;
      bool same = false;
      switch (e.type) {
        case EntryType::kDir:
          same = S_ISDIR(st.st_mode) && (st.st_mode & 07777) == e.mode;
          break;
        case EntryType::kSymlink:
          if (S_ISLNK(st.st_mode)) {
            char buf[PATH_MAX + 1];
            auto parent = e.path.rfind('/');
            auto dir = parent == std::string::npos
                           ? internal::OpenDir(os, live_fd->get(), ".")
                           : internal::OpenBeneath(os, live_fd->get(), e.path.substr(0, parent),
                                                   O_RDONLY | O_DIRECTORY);
            if (!dir.ok()) return dir.take_error();
            std::string name = parent == std::string::npos ? e.path : e.path.substr(parent + 1);
            ssize_t n = os.ReadlinkAt(dir->get(), name.c_str(), buf, sizeof buf);
            same = n >= 0 && std::string(buf, static_cast<size_t>(n)) == e.target &&
                   MtimeNs(st) == e.mtime_ns;
          }
          break;
        case EntryType::kFile:
          same = S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) == e.size &&
                 (st.st_mode & 07777) == e.mode && MtimeNs(st) == e.mtime_ns;
          if (same && options.content) {
            auto f = internal::OpenBeneath(os, live_fd->get(), e.path, O_RDONLY | O_NONBLOCK);
            if (!f.ok()) return f.take_error();
            DESPOOL_ASSIGN_OR_RETURN(std::uint64_t h, HashFd(f->get(), e.path, buf));
            same = h == e.hash;
          }
          break;
      }
      if (!same) r.changed.push_back(e.path);
    }
    for (const auto& [path, st] : live) {
      if (m.Find(path) < 0) r.extra.push_back(path);
    }
    std::sort(r.extra.begin(), r.extra.end());
    return r;
  }
};

// ---- Engine ----

Engine::Engine(EngineConfig config)
    : impl_(std::make_unique<Impl>(
          config.os ? *config.os : RealOs(),
          config.probe ? config.probe : std::shared_ptr<InUseProbe>(MakeAutoProbe()),
          std::move(config.checkpoint), config.threads)) {
  impl_->seed_spare = config.seed_spare;
}

Engine::~Engine() = default;

RefreshOutcome Engine::Refresh(const RefreshRequest& req, const ProgressFn& progress,
                               const CancelToken& cancel) {
  return impl_->Refresh(req, progress, cancel);
}

Status Engine::CheckDpRoot(const std::string& dp_root) {
  Os& os = impl_->os;
  DESPOOL_ASSIGN_OR_RETURN(Dirs d, impl_->OpenDirs(dp_root, true));
  DESPOOL_ASSIGN_OR_RETURN(Fd check, internal::MakeDir(os, d.meta.get(), "check", 0755));
  // Each check works in its own "<pid>.<random>" dir: several workers may start on one DP at
  // once, and none may remove another's scratch dirs mid-check. Recover() removes the dirs of
  // processes that no longer exist.
  std::random_device random;
  const std::string mine = std::to_string(::getpid()) + "." + std::to_string(random()) +
                           std::to_string(random());
  DESPOOL_ASSIGN_OR_RETURN(Fd scratch, internal::MakeDir(os, check.get(), mine, 0700));
  const char* a = "a";
  const char* b = "b";
  auto check_exchange = [&]() -> Status {
    if (os.MkdirAt(scratch.get(), a, 0700) != 0) return SysError("DP root not writable", errno);
    if (os.MkdirAt(scratch.get(), b, 0700) != 0) return SysError("DP root not writable", errno);
    struct stat sa, sb, after;
    if (os.FstatAt(scratch.get(), a, &sa, AT_SYMLINK_NOFOLLOW) != 0 ||
        os.FstatAt(scratch.get(), b, &sb, AT_SYMLINK_NOFOLLOW) != 0) {
      return SysError("stat scratch dirs", errno);
    }
    int rc = os.RenameAt2(scratch.get(), a, scratch.get(), b, RENAME_EXCHANGE);
    int err = errno;
    if (rc != 0) {
      if (err == EINVAL || err == ENOSYS || err == EOPNOTSUPP) {
        return MakeError(ErrorCode::kFailedPrecondition,
                         "DP root " + dp_root + ": the filesystem does not support "
                         "renameat2(RENAME_EXCHANGE); despool refuses it");
      }
      return SysError("renameat2(RENAME_EXCHANGE) on " + dp_root, err);
    }
    bool swapped = os.FstatAt(scratch.get(), a, &after, AT_SYMLINK_NOFOLLOW) == 0 &&
                   after.st_ino == sb.st_ino;
    if (!swapped) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "DP root " + dp_root + ": RENAME_EXCHANGE did not swap the scratch dirs");
    }
    return Status::Ok();
  };
  Status result = check_exchange();
  Status cleanup = internal::RemoveTree(os, check.get(), mine);
  if (!result.ok()) return result;
  return cleanup;
}

Status Engine::Recover(const std::string& dp_root) {
  Os& os = impl_->os;
  auto root = impl_->OpenRoot(dp_root);
  if (!root.ok()) return root.take_error();
  Dirs d;
  d.root = std::move(root).value();
  struct stat st;
  if (os.FstatAt(d.root.get(), kMetaDir, &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT) {
    return Status::Ok();  // nothing was ever done here
  }
  DESPOOL_RETURN_IF_ERROR(impl_->OpenMeta(&d, true));
  // Every package with anything in flight: journals, staging, trash, temp manifests.
  std::unordered_set<std::string> packages;
  auto collect = [&](int dirfd, char sep) -> Status {
    std::vector<DirEntry> entries;
    if (os.ReadDir(dirfd, &entries) != 0) return SysError("readdir .despool", errno);
    for (const auto& e : entries) {
      auto pos = sep == '@' ? e.name.find('@') : e.name.rfind(".journal");
      if (sep == 'm') pos = e.name.rfind(".manifest.tmp");
      if (pos == std::string::npos || pos == 0) continue;
      std::string pkg = e.name.substr(0, pos);
      if (ValidatePackageId(pkg).ok()) packages.insert(pkg);
    }
    return Status::Ok();
  };
  DESPOOL_RETURN_IF_ERROR(collect(d.journal.get(), 'j'));
  DESPOOL_RETURN_IF_ERROR(collect(d.staging.get(), '@'));
  DESPOOL_RETURN_IF_ERROR(collect(d.trash.get(), '@'));
  DESPOOL_RETURN_IF_ERROR(collect(d.state.get(), 'm'));
  Status first_error = Status::Ok();
  for (const auto& pkg : packages) {
    auto lock = impl_->Lock(d, pkg, std::chrono::milliseconds(0), nullptr);
    if (!lock.ok()) continue;  // a live refresh holds it and recovers on its own
    auto installed = impl_->PeekInstalled(d, pkg);
    std::optional<std::uint64_t> keep;
    // Keep the newest complete staged tree above the installed version for reuse.
    std::vector<DirEntry> entries;
    if (os.ReadDir(d.staging.get(), &entries) == 0) {
      for (const auto& e : entries) {
        std::string prefix = pkg + "@";
        if (e.name.rfind(prefix, 0) != 0) continue;
        std::string rest = e.name.substr(prefix.size());
        std::uint64_t v = 0;
        auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), v);
        if (ec != std::errc() || std::string(p) != ".manifest") continue;
        if (installed.ok() && installed->has_value() && **installed >= v) continue;
        if (!keep || *keep < v) keep = v;
      }
    }
    Status s = impl_->RecoverPackage(d, pkg, keep);
    if (!s.ok()) {
      Log()->error("recovery failed package={} error={}", pkg, s.error().ToString());
      if (first_error.ok()) first_error = s;
    }
  }
  // Scratch dirs of interrupted CheckDpRoot calls: only those of processes that are gone (a
  // worker starting beside us may be checking right now).
  auto check = internal::OpenDir(os, d.meta.get(), "check");
  std::vector<DirEntry> scratch;
  if (check.ok() && os.ReadDir(check->get(), &scratch) == 0) {
    for (const auto& e : scratch) {
      long pid = std::strtol(e.name.c_str(), nullptr, 10);
      if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
        (void)internal::RemoveTree(os, check->get(), e.name);
      }
    }
  }
  return first_error;
}

Result<std::optional<std::uint64_t>> Engine::InstalledVersion(const std::string& dp_root,
                                                              const std::string& package_id) {
  DESPOOL_RETURN_IF_ERROR(ValidatePackageId(package_id));
  DESPOOL_ASSIGN_OR_RETURN(Fd root, impl_->OpenRoot(dp_root));
  Dirs d;
  d.root = std::move(root);
  if (!impl_->OpenMeta(&d, false).ok()) return std::optional<std::uint64_t>();
  return impl_->PeekInstalled(d, package_id);
}

Result<Manifest> Engine::InstalledManifest(const std::string& dp_root,
                                           const std::string& package_id) {
  DESPOOL_RETURN_IF_ERROR(ValidatePackageId(package_id));
  DESPOOL_ASSIGN_OR_RETURN(Dirs d, impl_->OpenDirs(dp_root, false));
  DESPOOL_ASSIGN_OR_RETURN(auto m, impl_->ReadManifest(d.state.get(), ManifestFile(package_id)));
  if (!m) return MakeError(ErrorCode::kNotFound, "package " + package_id + " is not installed");
  return std::move(*m);
}

Result<VerifyReport> Engine::Verify(const std::string& dp_root, const std::string& package_id,
                                    const VerifyOptions& options) {
  DESPOOL_RETURN_IF_ERROR(ValidatePackageId(package_id));
  DESPOOL_ASSIGN_OR_RETURN(Dirs d, impl_->OpenDirs(dp_root, true));
  DESPOOL_ASSIGN_OR_RETURN(Fd lock, impl_->Lock(d, package_id, std::chrono::milliseconds(0), nullptr));
  DESPOOL_RETURN_IF_ERROR(impl_->RollJournal(d, package_id));
  DESPOOL_ASSIGN_OR_RETURN(auto m, impl_->ReadManifest(d.state.get(), ManifestFile(package_id)));
  if (!m) return MakeError(ErrorCode::kNotFound, "package " + package_id + " is not installed");
  return impl_->VerifyLocked(d, *m, package_id, options);
}

RefreshOutcome Engine::Repair(const std::string& dp_root, const std::string& package_id,
                              const RefreshOptions& options, const ProgressFn& progress,
                              const CancelToken& cancel) {
  if (auto s = ValidatePackageId(package_id); !s.ok()) return ErrorOutcome(s.take_error());
  Impl::Job job;
  job.pkg = package_id;
  job.opt = &options;
  job.progress = &progress;
  job.cancel = &cancel;
  auto lock = impl_->Prepare(job, dp_root);
  if (!lock.ok()) return ErrorOutcome(lock.take_error());
  if (!job.old) {
    return ErrorOutcome(MakeError(ErrorCode::kFailedPrecondition,
                                  "package " + package_id + " is not installed: nothing to repair"));
  }
  auto report = impl_->VerifyLocked(job.d, *job.old, package_id, VerifyOptions{true});
  if (!report.ok()) return ErrorOutcome(report.take_error());
  if (report->clean()) return Impl::UpToDate(job.old->version);
  job.version = job.old->version;
  job.source = job.old->source;
  Manifest expected = *job.old;
  job.repair_of = &expected;
  for (const auto& p : report->changed) job.repair_bad.insert(p);
  for (const auto& p : report->missing) job.repair_bad.insert(p);
  if (auto s = ValidateSourcePath(job.source); !s.ok()) return ErrorOutcome(s.take_error());
  // The installed version's own staged name may hold nothing useful: start clean.
  job.staged = StagedName(job.pkg, job.version);
  if (auto s = impl_->RemoveStaged(job); !s.ok()) return ErrorOutcome(s.take_error());
  return impl_->RunLocked(job);
}

}  // namespace despool::workers
