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

class LeaseProbe final : public InUseProbe {
 public:
  const char* name() const override { return "lease"; }

  Result<InUseReport> Check(int package_dirfd, const std::vector<std::string>& rel_paths) override {
    if (!LeaseBreakSignalIsSafe()) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "lease probe unavailable: SIGIO has its default action (it would kill the "
                       "process on a lease break); call IgnoreLeaseBreakSignal() at start-up");
    }
    for (const auto& rel : rel_paths) DESPOOL_RETURN_IF_ERROR(ValidateRelPath(rel));

    InUseReport report;
    DirWalker walker(package_dirfd);
    for (const auto& rel : rel_paths) {
      DESPOOL_ASSIGN_OR_RETURN(DirWalker::Leaf leaf, walker.Resolve(rel));
      if (leaf.gone) continue;
      // O_NONBLOCK: if someone else holds a lease on it (smbd with kernel oplocks), fail with
      // EWOULDBLOCK instead of waiting for their lease to break — they have it open: in use.
      int fd = ::openat(leaf.dirfd, leaf.name.data(),
                        O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
      if (fd < 0) {
        int err = errno;
        if (err == ENOENT || err == ENOTDIR) continue;  // gone: not in use
        if (err == ELOOP || err == ENXIO) continue;     // a symlink or a socket: not a file
        if (err == EWOULDBLOCK) {
          report.in_use.push_back(rel);
          continue;
        }
        if (err == EACCES || err == EPERM) return LeasesUnavailable(rel, "cannot open the file", err);
        return SysError("lease probe: open '" + rel + "'", err);
      }
      int rc = ::fcntl(fd, F_SETLEASE, F_WRLCK);
      int err = rc == 0 ? 0 : errno;
      if (rc == 0) {
        ::fcntl(fd, F_SETLEASE, F_UNLCK);  // release at once (close would release it as well)
        ::close(fd);
        continue;
      }
      struct stat st {};
      bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
      ::close(fd);
      if (err == EAGAIN) {
        report.in_use.push_back(rel);
      } else if (err == EINVAL && !regular) {
        continue;  // a directory or FIFO: leases apply to regular files only; not a file to check
      } else if (err == EINVAL) {
        return LeasesUnavailable(rel, "the filesystem does not support leases, or they are disabled", err);
      } else if (err == EACCES || err == EPERM) {
        return LeasesUnavailable(rel, "not the file's owner and no CAP_LEASE", err);
      } else {
        return SysError("lease probe: F_SETLEASE '" + rel + "'", err);
      }
    }
    std::sort(report.in_use.begin(), report.in_use.end());
    report.in_use.erase(std::unique(report.in_use.begin(), report.in_use.end()), report.in_use.end());
    return report;
  }
};

}  // namespace

std::unique_ptr<InUseProbe> MakeLeaseProbe() { return std::make_unique<LeaseProbe>(); }

Status IgnoreLeaseBreakSignal() {
  struct sigaction current {};
  if (::sigaction(SIGIO, nullptr, &current) != 0) return SysError("sigaction(SIGIO)", errno);
  bool has_handler = (current.sa_flags & SA_SIGINFO) ? current.sa_sigaction != nullptr
                                                       : (current.sa_handler != SIG_DFL &&
                                                          current.sa_handler != SIG_IGN);
  if (has_handler) return Status::Ok();  // someone else's handler owns SIGIO; it keeps us alive
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  if (::sigaction(SIGIO, &ignore, nullptr) != 0) return SysError("sigaction(SIGIO, SIG_IGN)", errno);
  return Status::Ok();
}

}  // namespace despool::workers
