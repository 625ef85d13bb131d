// Write-lease in-use probe, and the SIGIO set-up it depends on.
//
// fcntl(F_SETLEASE, F_WRLCK) is granted only when no other open file description refers to the
// inode: another process's descriptor, a mapping whose descriptor was closed, a running
// executable (checked on ext4, see FIELD-NOTES) and an SMB client's open file (held by smbd)
// all make it fail with EAGAIN. A granted lease is released at once: while we hold it, other
// openers (smbd) are delayed and we get SIGIO.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>
#include <thread>

#include "despool/workers/inuse.h"
#include "inuse_internal.h"

namespace despool::workers {
namespace {

using inuse_internal::DirWalker;
using inuse_internal::ValidateRelPath;

bool LeaseBreakSignalIsSafe() {
  struct sigaction current {};
  if (::sigaction(SIGIO, nullptr, &current) != 0) return false;
  if (current.sa_flags & SA_SIGINFO) return current.sa_sigaction != nullptr;
  return current.sa_handler != SIG_DFL;
}

Error LeasesUnavailable(const std::string& rel, const char* why, int err) {
  Error e = MakeError(ErrorCode::kFailedPrecondition,
                      std::string("lease probe unavailable: ") + why + " (on '" + rel + "')");
  e.sys_errno = err;
  return e;
}

// What probing one file found. kSkip: gone, a symlink, not a regular file.
enum class Verdict { kFree, kInUse, kSkip, kError };

struct Probed {
  Verdict verdict = Verdict::kFree;
  Error error;  // for kError
};

Probed ProbeOne(int dirfd, const char* name, const std::string& rel) {
  // O_NONBLOCK: if someone else holds a lease on it (smbd with kernel oplocks), fail with
  // EWOULDBLOCK instead of waiting for their lease to break — they have it open: in use.
  int fd;
  do {
    fd = ::openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);  // a SIGIO handler installed without SA_RESTART
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) return {Verdict::kSkip, {}};  // gone: not in use
    if (err == ELOOP || err == ENXIO) return {Verdict::kSkip, {}};     // a symlink, a socket
    if (err == EWOULDBLOCK) return {Verdict::kInUse, {}};
    if (err == EACCES || err == EPERM)
      return {Verdict::kError, LeasesUnavailable(rel, "cannot open the file", err)};
    return {Verdict::kError, SysError("lease probe: open '" + rel + "'", err)};
  }
  if (::fcntl(fd, F_SETLEASE, F_WRLCK) == 0) {
    ::fcntl(fd, F_SETLEASE, F_UNLCK);  // release at once (close would release it as well)
    ::close(fd);
    return {Verdict::kFree, {}};
  }
  int err = errno;
  struct stat st {};
  bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  ::close(fd);
  if (err == EAGAIN) return {Verdict::kInUse, {}};
  // A directory or FIFO: leases apply to regular files only, and it is not a file to check.
  if (err == EINVAL && !regular) return {Verdict::kSkip, {}};
  if (err == EINVAL) {
    return {Verdict::kError,
            LeasesUnavailable(rel, "the filesystem does not support leases, or they are disabled",
                              err)};
  }
  if (err == EACCES || err == EPERM) {
    return {Verdict::kError, LeasesUnavailable(rel, "not the file's owner and no CAP_LEASE", err)};
  }
  return {Verdict::kError, SysError("lease probe: F_SETLEASE '" + rel + "'", err)};
}

class LeaseProbe final : public InUseProbe {
 public:
  explicit LeaseProbe(LeaseProbeOptions options) : options_(options) {}
  const char* name() const override { return "lease"; }

  Result<InUseReport> Check(int package_dirfd, const std::vector<std::string>& rel_paths) override {
    if (!LeaseBreakSignalIsSafe()) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "lease probe unavailable: SIGIO has its default action (it would kill the "
                       "process on a lease break); call IgnoreLeaseBreakSignal() at start-up");
    }
    for (const auto& rel : rel_paths) DESPOOL_RETURN_IF_ERROR(ValidateRelPath(rel));

    // Resolve every parent directory first (cached, single-threaded), then probe the files.
    DirWalker walker(package_dirfd);
    std::vector<int> dirfds(rel_paths.size(), -1);
    std::vector<const char*> names(rel_paths.size(), nullptr);
    for (std::size_t i = 0; i < rel_paths.size(); ++i) {
      DESPOOL_ASSIGN_OR_RETURN(DirWalker::Leaf leaf, walker.Resolve(rel_paths[i]));
      dirfds[i] = leaf.dirfd;
      names[i] = leaf.name.data();  // a suffix of rel_paths[i]: NUL-terminated
    }

    std::vector<Verdict> verdicts(rel_paths.size(), Verdict::kSkip);
    std::vector<Error> errors(rel_paths.size());
    auto probe_range = [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) {
        if (dirfds[i] < 0) continue;  // a parent is gone
        Probed p = ProbeOne(dirfds[i], names[i], rel_paths[i]);
        verdicts[i] = p.verdict;
        if (p.verdict == Verdict::kError) {
          errors[i] = std::move(p.error);
          return;  // the whole probe fails: no need to go on in this range
        }
      }
    };
    RunSplit(rel_paths.size(), probe_range);

    InUseReport report;
    for (std::size_t i = 0; i < rel_paths.size(); ++i) {
      if (verdicts[i] == Verdict::kError) return std::move(errors[i]);
      if (verdicts[i] == Verdict::kInUse) report.in_use.push_back(rel_paths[i]);
    }
    std::sort(report.in_use.begin(), report.in_use.end());
    report.in_use.erase(std::unique(report.in_use.begin(), report.in_use.end()),
                        report.in_use.end());
    return report;
  }

 private:
  // Splits [0, n) into contiguous ranges (neighbouring files share directories) over threads.
  template <typename Fn>
  void RunSplit(std::size_t n, Fn& fn) const {
    std::size_t threads = options_.threads;
    if (threads == 0) {
      threads = std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, 4);
    }
    const std::size_t per_thread = std::max<std::size_t>(1, options_.min_files_per_thread);
    threads = std::min(threads, std::max<std::size_t>(1, n / per_thread));
    std::vector<std::thread> workers;
    std::size_t chunk = (n + threads - 1) / std::max<std::size_t>(threads, 1);
    std::size_t begin = chunk;
    for (std::size_t t = 1; t < threads && begin < n; ++t, begin += chunk) {
      try {
        workers.emplace_back(fn, begin, std::min(n, begin + chunk));
      } catch (const std::system_error&) {
        fn(begin, std::min(n, begin + chunk));  // no thread: do it here
      }
    }
    fn(std::size_t{0}, std::min(n, chunk));
    for (auto& w : workers) w.join();
  }

  LeaseProbeOptions options_;
};

}  // namespace

std::unique_ptr<InUseProbe> MakeLeaseProbe(LeaseProbeOptions options) {
  return std::make_unique<LeaseProbe>(options);
}

Status IgnoreLeaseBreakSignal() {
  struct sigaction current {};
  if (::sigaction(SIGIO, nullptr, &current) != 0) return SysError("sigaction(SIGIO)", errno);
  bool has_handler = (current.sa_flags & SA_SIGINFO)
                         ? current.sa_sigaction != nullptr
                         : (current.sa_handler != SIG_DFL && current.sa_handler != SIG_IGN);
  if (has_handler) return Status::Ok();  // someone else's handler owns SIGIO; it keeps us alive
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  if (::sigaction(SIGIO, &ignore, nullptr) != 0)
    return SysError("sigaction(SIGIO, SIG_IGN)", errno);
  return Status::Ok();
}

}  // namespace despool::workers
