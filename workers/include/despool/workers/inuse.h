// In-use detection: which files of a package directory are open (or mapped, or executing)
// in any process on this host?
//
// Contract (CONTRACT.md): a probe that cannot inspect every file or process it was asked about
// never answers "not in use". It reports complete=false with a reason, and the engine turns
// that into a deferral or a retryable error — never into a switch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "despool/common/result.h"

namespace despool::workers {

struct InUseHolder {
  std::int64_t pid = 0;
  std::string command;   // /proc/<pid>/comm, may be empty
  std::string path;      // relative to the package directory
};

struct InUseReport {
  std::vector<std::string> in_use;       // relative paths found in use, sorted, unique
  std::vector<InUseHolder> holders;      // where the probe can name them (may be empty)
  bool complete = true;                  // false: some file or process could not be inspected
  std::string incomplete_reason;         // what could not be seen, when !complete
};

class InUseProbe {
 public:
  virtual ~InUseProbe() = default;
  virtual const char* name() const = 0;
  // package_dirfd: an O_DIRECTORY fd of the live package directory.
  // rel_paths: the regular files to check, relative to it (the files a refresh would replace
  // or remove; or every file, for the "any open file blocks" option).
  // An error means the probe could not run at all (the caller may fall back to another probe).
  virtual Result<InUseReport> Check(int package_dirfd, const std::vector<std::string>& rel_paths) = 0;
};

// Write-lease probe: fcntl(F_SETLEASE, F_WRLCK) is granted only when no other descriptor (and no
// mapping, no running executable) refers to the file. Exact and fast; cannot name holders.
// Fails with kFailedPrecondition when leases are unavailable (EINVAL, EACCES/EPERM, disabled).
std::unique_ptr<InUseProbe> MakeLeaseProbe();

// /proc scan (as fuser does): /proc/*/fd, /proc/*/maps and /proc/*/exe, matching (dev, inode).
// Names holders. Incomplete when a process's fd/maps cannot be read (permission).
std::unique_ptr<InUseProbe> MakeProcProbe(std::string proc_root = "/proc");

// The default: the lease probe to find what is in use (falling back to the /proc scan when
// leases are refused), then the /proc scan restricted to the files found in use to name holders.
std::unique_ptr<InUseProbe> MakeAutoProbe();

}  // namespace despool::workers
