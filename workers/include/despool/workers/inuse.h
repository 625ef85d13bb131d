// In-use detection: which files of a package directory are open (or mapped, or executing)
// in any process on this host?
//
// Contract (CONTRACT.md): a probe that cannot inspect every file or process it was asked about
// never answers "not in use". It reports complete=false with a reason, and the engine turns
// that into a deferral or a retryable error — never into a switch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "despool/common/result.h"

namespace despool::workers {

struct InUseHolder {
  std::int64_t pid = 0;
  std::string command;  // /proc/<pid>/comm, may be empty
  std::string path;     // relative to the package directory
};

struct InUseReport {
  std::vector<std::string> in_use;   // relative paths found in use, sorted, unique
  std::vector<InUseHolder> holders;  // where the probe can name them (may be empty)
  bool complete = true;              // false: some file or process could not be inspected
  std::string incomplete_reason;     // what could not be seen, when !complete
};

// Paths: each rel path is opened component by component below package_dirfd, never following a
// symlink (so a probe never leaves the package). A path that does not exist (or whose parent
// is not a directory) is not in use; a path naming a symlink or a non-regular file is not in use
// either (nothing can hold a symlink itself open; its target is checked under its own path).
// Paths that are absolute, empty, or contain "." / ".." components are refused
// (kInvalidArgument). Probes keep no state between calls: one may serve several threads.

class InUseProbe {
 public:
  virtual ~InUseProbe() = default;
  virtual const char* name() const = 0;
  // package_dirfd: an O_DIRECTORY fd of the live package directory.
  // rel_paths: the regular files to check, relative to it (the files a refresh would replace
  // or remove; or every file, for the "any open file blocks" option).
  // An error means the probe could not run at all (the caller may fall back to another probe).
  virtual Result<InUseReport> Check(int package_dirfd,
                                    const std::vector<std::string>& rel_paths) = 0;
};

// Write-lease probe: fcntl(F_SETLEASE, F_WRLCK) is granted only when no other descriptor (and no
// mapping, no running executable) refers to the file — including our own process's. Exact and
// fast; cannot name holders. A granted lease is released at once. A file someone else holds a
// lease on (smbd with kernel oplocks) counts as in use. Fails with kFailedPrecondition when
// leases are unavailable for any file (EINVAL: filesystem without leases or leases disabled;
// EACCES/EPERM: not the owner and no CAP_LEASE, or the file cannot be opened), or while SIGIO
// would kill us (see IgnoreLeaseBreakSignal); always complete when it succeeds.
struct LeaseProbeOptions {
  // Files are probed by up to this many threads (0: hardware concurrency, at most 4), each
  // taking a contiguous share of at least min_files_per_thread files. Probing is syscall-bound
  // (open, fcntl x2, close per file): two threads nearly halve 10,000 files.
  unsigned threads = 0;
  std::size_t min_files_per_thread = 2000;
};
std::unique_ptr<InUseProbe> MakeLeaseProbe(LeaseProbeOptions options = {});

// /proc scan (as fuser does): /proc/*/fd, /proc/*/maps and /proc/*/exe, matching (dev, inode).
// Names holders. Incomplete (naming the pids) when a process's fd entries or maps cannot be read
// (permission; kernel threads and zombies excepted: they hold no files), when a requested file
// cannot be stat'ed, or when procfs is mounted with hidepid=invisible/ptraceable. Processes that
// exit mid-scan held nothing. Cannot see processes in other PID namespaces (containers) or remote
// NFS clients. Fails with kFailedPrecondition when proc_root cannot be opened.
std::unique_ptr<InUseProbe> MakeProcProbe(std::string proc_root = "/proc");

// The default: the lease probe to find what is in use (falling back to the /proc scan when
// leases are refused), then the /proc scan restricted to the files found in use to name holders.
// complete is the lease probe's (exact for every file) when it ran — holders are then
// best-effort, possibly empty — and the /proc scan's when it stood in.
std::unique_ptr<InUseProbe> MakeAutoProbe();

// The same, with the two probes supplied (tests inject fakes; a caller may pass a /proc probe on
// another proc_root). `lease` failing with any error but kInvalidArgument (bad paths) makes it
// fall back to `proc` for every file; both failing is an error naming both reasons.
std::unique_ptr<InUseProbe> MakeAutoProbe(std::unique_ptr<InUseProbe> lease,
                                          std::unique_ptr<InUseProbe> proc);

// Lease breaks: while we hold a lease (microseconds: it is released as soon as it is granted),
// another process opening the file makes the kernel signal us with SIGIO, whose default action
// terminates the process. A process that uses the lease probe must call this once at start-up,
// before starting threads: it sets SIGIO's disposition to SIG_IGN (blocking would not do: a
// pending SIGIO would kill us when unblocked). If SIGIO already has a handler it is left in
// place (that handler must tolerate lease breaks). Fails only if sigaction fails.
// Until SIGIO is ignored or handled, the lease probe refuses to run (kFailedPrecondition), so the
// auto probe falls back to the /proc scan instead of risking the process.
Status IgnoreLeaseBreakSignal();

}  // namespace despool::workers
