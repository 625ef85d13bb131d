// /proc in-use probe (as fuser does): match the (st_dev, st_ino) of the requested files against
// every process's open descriptors (/proc/<pid>/fd/*), mappings (/proc/<pid>/maps) and executable
// (/proc/<pid>/exe). Names the holders. Reads /proc with getdents64 and *at() calls relative to
// each process directory: no std::filesystem, no readlink, one statx per descriptor.
//
// Completeness: a process whose fd directory or maps cannot be read (EACCES/EPERM: another
// user's process without CAP_SYS_PTRACE, hidepid=1) makes the report incomplete, naming the pid —
// except kernel threads (PF_KTHREAD) and zombies, which have no files or mappings of their own. A
// process that exits mid-scan (ENOENT/ESRCH) simply held nothing. Not seen (as with fuser):
// processes in other PID namespaces, and threads that unshared their descriptor table (CLONE_FILES
// unset).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "despool/workers/inuse.h"
#include "fsutil.h"
#include "inuse_internal.h"

namespace despool::workers {
namespace {

using inuse_internal::DirWalker;
using inuse_internal::ValidateRelPath;

constexpr unsigned kPfKthread = 0x00200000;  // include/linux/sched.h
constexpr std::size_t kMaxNamedUnreadable = 5;

struct FileKey {
  dev_t dev;
  ino_t ino;
  bool operator==(const FileKey&) const = default;
};
struct FileKeyHash {
  std::size_t operator()(const FileKey& k) const {
    return std::hash<std::uint64_t>()(static_cast<std::uint64_t>(k.ino) * 0x9E3779B97F4A7C15ull ^
                                      static_cast<std::uint64_t>(k.dev));
  }
};

using internal::Fd;

// The scan's descriptors are plain ones of /proc (the engine's Os is for the DP's filesystem);
// they close through RealOs(). No system call: the errno of a failed open survives it.
Fd Adopt(int fd) { return Fd(&RealOs(), fd); }

bool Vanished(int err) {
  return err == ENOENT || err == ESRCH;
}

// Reads a /proc file completely into buf (its size becomes the file's length). The buffer only
// grows, so one reused across processes costs no allocation or zero-filling per file; seq files
// may return short reads before the end, hence the loop to EOF. Returns 0 or an errno.
int ReadAll(int dirfd, const char* name, std::string& buf) {
  Fd fd = Adopt(::openat(dirfd, name, O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno;
  if (buf.size() < 16384) buf.resize(16384);
  std::size_t used = 0;
  for (;;) {
    if (buf.size() - used < 4096) buf.resize(buf.size() * 2);
    ssize_t n = ::read(fd.get(), buf.data() + used, buf.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  buf.resize(used);  // shrinking keeps the capacity: the next resize up does not reallocate
  return 0;
}

// Calls fn(name) for each entry of the directory fd, "." and ".." excluded, until fn returns
// false. Returns 0 or an errno.
template <typename Fn>
int ForEachEntry(int dirfd, Fn&& fn) {
  alignas(dirent64) char buf[32768];
  for (;;) {
    ssize_t n = ::getdents64(dirfd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return 0;
    for (ssize_t off = 0; off < n;) {
      auto* d = reinterpret_cast<dirent64*>(buf + off);
      off += d->d_reclen;
      if (d->d_name[0] == '.' && (d->d_name[1] == 0 || (d->d_name[1] == '.' && d->d_name[2] == 0)))
        continue;
      if (!fn(d->d_name)) return 0;
    }
  }
}

// A kernel thread (PF_KTHREAD) or a zombie: no descriptors or mappings of its own, so an
// unreadable fd dir or maps hides nothing. Read from /proc/<pid>/stat, which anyone may read.
bool HoldsNoFiles(int pid_dirfd) {
  std::string stat;
  if (ReadAll(pid_dirfd, "stat", stat) != 0) return false;
  std::size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return false;
  // After "pid (comm)": state ppid pgrp session tty_nr tpgid flags ...
  const char* p = stat.data() + paren + 1;
  const char* end = stat.data() + stat.size();
  while (p < end && *p == ' ') ++p;
  if (p < end && (*p == 'Z' || *p == 'X')) return true;
  for (int field = 0; field < 6; ++field) {
    while (p < end && *p == ' ') ++p;
    while (p < end && *p != ' ') ++p;
  }
  while (p < end && *p == ' ') ++p;
  unsigned flags = 0;
  auto [q, ec] = std::from_chars(p, end, flags);
  (void)q;
  return ec == std::errc() && (flags & kPfKthread) != 0;
}

std::string ReadComm(int pid_dirfd) {
  std::string comm;
  if (ReadAll(pid_dirfd, "comm", comm) != 0) return {};
  while (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm;
}

// When proc_root is a procfs mounted with hidepid=invisible (2) or ptraceable (4), processes we
// may not inspect are not even listed: the scan cannot tell what it missed. Returns why, or ""
// when every process is listed (or we are in the mount's gid= group, which sees them all).
// Conservative on purpose: CAP_SYS_PTRACE usually sees through hidepid, but an LSM or a
// more-privileged supervisor can still hide a process from root.
std::string HiddenProcessesReason(int proc_fd) {
  struct statx stx {};
  if (::statx(proc_fd, "", AT_EMPTY_PATH, STATX_MNT_ID, &stx) != 0 ||
      !(stx.stx_mask & STATX_MNT_ID))
    return {};
  std::string mountinfo;
  Fd self = Adopt(::open("/proc/self", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!self.valid() || ReadAll(self.get(), "mountinfo", mountinfo) != 0) return {};
  const std::string id = std::to_string(stx.stx_mnt_id) + " ";
  std::size_t pos = 0;
  while (pos < mountinfo.size()) {
    std::size_t eol = mountinfo.find('\n', pos);
    if (eol == std::string::npos) eol = mountinfo.size();
    std::string_view line(mountinfo.data() + pos, eol - pos);
    pos = eol + 1;
    if (line.substr(0, id.size()) != id) continue;
    // "... - fstype source super_options"
    std::size_t sep = line.find(" - ");
    if (sep == std::string_view::npos) return {};
    std::string_view tail = line.substr(sep + 3);
    if (tail.substr(0, 5) != "proc ") return {};
    std::string_view options = tail.substr(tail.rfind(' ') + 1);
    bool hidden = false;
    long gid = -1;
    while (!options.empty()) {
      std::size_t comma = options.find(',');
      std::string_view opt = options.substr(0, comma);
      options = comma == std::string_view::npos ? std::string_view() : options.substr(comma + 1);
      if (opt == "hidepid=2" || opt == "hidepid=invisible" || opt == "hidepid=4" ||
          opt == "hidepid=ptraceable") {
        hidden = true;
      } else if (opt.substr(0, 4) == "gid=") {
        std::from_chars(opt.data() + 4, opt.data() + opt.size(), gid);
      }
    }
    if (!hidden) return {};
    if (gid >= 0) {
      if (static_cast<gid_t>(gid) == ::getegid()) return {};
      std::vector<gid_t> groups(static_cast<std::size_t>(std::max(::getgroups(0, nullptr), 0)));
      int n = ::getgroups(static_cast<int>(groups.size()), groups.data());
      for (int i = 0; i < n; ++i) {
        if (groups[static_cast<std::size_t>(i)] == static_cast<gid_t>(gid)) return {};
      }
    }
    return "procfs is mounted with hidepid: processes we may not inspect are not listed";
  }
  return {};
}

class Scanner {
 public:
  Scanner(const std::unordered_map<FileKey, std::vector<std::size_t>, FileKeyHash>& targets)
      : targets_(targets) {
    for (const auto& [key, idx] : targets_) inodes_.insert(key.ino);
  }

  // pid -> (comm, target indexes)
  std::map<std::int64_t, std::pair<std::string, std::vector<std::size_t>>> hits;
  std::vector<std::string> unreadable;  // "pid N: what" for the first few
  std::size_t unreadable_count = 0;

  void ScanProcess(int proc_fd, const char* name, std::int64_t pid) {
    Fd pid_dir = Adopt(::openat(proc_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!pid_dir.valid()) {
      if (!Vanished(errno)) Unreadable(pid, "/proc entry", errno);
      return;
    }
    matched_.clear();
    // An unreadable part makes the report incomplete (recorded) but the rest is still read, so
    // that holders are named wherever we can see them. A vanished process held nothing.
    if (ScanFds(pid_dir.get(), pid) == Scan::kVanished) return;
    Scan maps = ScanMaps(pid_dir.get(), pid);
    if (maps == Scan::kVanished) return;
    if (maps == Scan::kOk && maps_.empty()) {
      // No mappings at all: a kernel thread or a zombie, which has no executable either.
      if (!matched_.empty()) RecordHits(pid_dir.get(), pid);
      return;
    }
    struct statx stx {};
    // Also in maps; checked for processes that unmapped their executable. Errors: kernel threads
    // have none; an unreadable one was recorded through fd/maps.
    if (::statx(pid_dir.get(), "exe", AT_STATX_DONT_SYNC, STATX_INO, &stx) == 0) {
      Match(FileKey{makedev(stx.stx_dev_major, stx.stx_dev_minor), stx.stx_ino});
    }
    if (!matched_.empty()) RecordHits(pid_dir.get(), pid);
  }

  void Unreadable(std::int64_t pid, const char* what, int err) {
    if (unreadable_count++ < kMaxNamedUnreadable) {
      unreadable.push_back("pid " + std::to_string(pid) + ": cannot read " + what + " (" +
                           std::strerror(err) + ")");
    }
  }

 private:
  void RecordHits(int pid_dirfd, std::int64_t pid) {
    auto& entry = hits[pid];
    entry.first = ReadComm(pid_dirfd);
    entry.second.insert(entry.second.end(), matched_.begin(), matched_.end());
  }

  enum class Scan { kOk, kVanished, kUnreadable };  // kUnreadable: already recorded

  Scan ScanFds(int pid_dirfd, std::int64_t pid) {
    Fd fd_dir = Adopt(::openat(pid_dirfd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd_dir.valid()) {
      int err = errno;
      if (Vanished(err)) return Scan::kVanished;
      if (!HoldsNoFiles(pid_dirfd)) Unreadable(pid, "fd", err);
      return Scan::kUnreadable;
    }
    int failed = 0;
    int rc = ForEachEntry(fd_dir.get(), [&](const char* fd_name) {
      struct statx stx {};
      // Follows the magic link to the open file. DONT_SYNC: never wait on a network filesystem.
      if (::statx(fd_dir.get(), fd_name, AT_STATX_DONT_SYNC, STATX_INO, &stx) != 0) {
        if (Vanished(errno)) return true;  // closed meanwhile: fine
        failed = errno;
        return false;  // access is decided per process: the other entries would fail alike
      }
      Match(FileKey{makedev(stx.stx_dev_major, stx.stx_dev_minor), stx.stx_ino});
      return true;
    });
    if (rc != 0 && Vanished(rc)) return Scan::kVanished;
    if (rc != 0) failed = rc;
    if (failed != 0) {
      Unreadable(pid, "fd entries", failed);
      return Scan::kUnreadable;
    }
    return Scan::kOk;
  }

  Scan ScanMaps(int pid_dirfd, std::int64_t pid) {
    int err = ReadAll(pid_dirfd, "maps", maps_);
    if (err != 0) {
      if (Vanished(err)) return Scan::kVanished;
      if (!HoldsNoFiles(pid_dirfd)) Unreadable(pid, "maps", err);
      return Scan::kUnreadable;
    }
    // Each line: "start-end perms offset MAJ:MIN inode   path". Hex device numbers.
    const char* p = maps_.data();
    const char* end = p + maps_.size();
    FileKey last{0, 0};
    while (p < end) {
      const char* eol =
          static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)));
      if (!eol) eol = end;
      const char* range_end =
          static_cast<const char*>(std::memchr(p, ' ', static_cast<std::size_t>(eol - p)));
      const char* f = range_end;
      for (int skip = 0; f && skip < 2; ++skip) {  // perms, offset
        f = static_cast<const char*>(
            std::memchr(f + 1, ' ', static_cast<std::size_t>(eol - f - 1)));
      }
      unsigned maj = 0, min = 0;
      std::uint64_t ino = 0;
      if (f) {
        ++f;
        auto r1 = std::from_chars(f, eol, maj, 16);
        if (r1.ec == std::errc() && r1.ptr < eol && *r1.ptr == ':') {
          auto r2 = std::from_chars(r1.ptr + 1, eol, min, 16);
          if (r2.ec == std::errc() && r2.ptr < eol && *r2.ptr == ' ') {
            std::from_chars(r2.ptr + 1, eol, ino);
          }
        }
      }
      if (ino != 0 && inodes_.count(static_cast<ino_t>(ino))) {
        FileKey key{makedev(maj, min), static_cast<ino_t>(ino)};
        if (!(key == last)) {
          last = key;
          if (!Match(key)) {
            // Same inode, other device: filesystems whose stat st_dev differs from the
            // superblock's (btrfs subvolumes). Stat the mapping itself where allowed.
            std::string range(p, range_end);
            std::string link = "map_files/" + range;
            struct statx stx {};
            if (::statx(pid_dirfd, link.c_str(), AT_STATX_DONT_SYNC, STATX_INO, &stx) == 0) {
              Match(FileKey{makedev(stx.stx_dev_major, stx.stx_dev_minor), stx.stx_ino});
            }
          }
        }
      }
      p = eol + 1;
    }
    return Scan::kOk;
  }

  bool Match(const FileKey& key) {
    auto it = targets_.find(key);
    if (it == targets_.end()) return false;
    for (std::size_t idx : it->second) matched_.push_back(idx);
    return true;
  }

  const std::unordered_map<FileKey, std::vector<std::size_t>, FileKeyHash>& targets_;
  std::unordered_set<ino_t> inodes_;
  std::vector<std::size_t> matched_;
  std::string maps_;
};

class ProcProbe final : public InUseProbe {
 public:
  explicit ProcProbe(std::string proc_root) : proc_root_(std::move(proc_root)) {}
  const char* name() const override { return "proc"; }

  Result<InUseReport> Check(int package_dirfd, const std::vector<std::string>& rel_paths) override {
    for (const auto& rel : rel_paths) DESPOOL_RETURN_IF_ERROR(ValidateRelPath(rel));
    InUseReport report;
    std::vector<std::string> problems;

    std::unordered_map<FileKey, std::vector<std::size_t>, FileKeyHash> targets;
    {
      DirWalker walker(package_dirfd);
      for (std::size_t i = 0; i < rel_paths.size(); ++i) {
        const std::string& rel = rel_paths[i];
        auto leaf = walker.Resolve(rel);
        if (!leaf.ok()) {
          problems.push_back("cannot reach '" + rel + "': " + leaf.error().message);
          continue;
        }
        if (leaf->gone) continue;
        struct stat st {};
        if (::fstatat(leaf->dirfd, leaf->name.data(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
          int err = errno;
          if (err != ENOENT && err != ENOTDIR) {
            problems.push_back("cannot stat '" + rel + "': " + std::strerror(err));
          }
          continue;
        }
        if (!S_ISREG(st.st_mode)) continue;
        targets[FileKey{st.st_dev, st.st_ino}].push_back(i);
      }
    }

    if (!targets.empty()) {
      Fd proc = Adopt(::open(proc_root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!proc.valid()) {
        Error e = SysError("proc probe: open " + proc_root_, errno);
        e.code = ErrorCode::kFailedPrecondition;
        return e;
      }
      if (std::string hidden = HiddenProcessesReason(proc.get()); !hidden.empty()) {
        problems.push_back(std::move(hidden));
      }
      Scanner scanner(targets);
      int rc = ForEachEntry(proc.get(), [&](const char* name) {
        std::int64_t pid = 0;
        const char* end = name + std::strlen(name);
        auto [p, ec] = std::from_chars(name, end, pid);
        if (ec != std::errc() || p != end || pid <= 0) return true;
        scanner.ScanProcess(proc.get(), name, pid);
        return true;
      });
      if (rc != 0) problems.push_back("cannot list " + proc_root_ + ": " + std::strerror(rc));
      for (auto& u : scanner.unreadable) problems.push_back(u);
      if (scanner.unreadable_count > scanner.unreadable.size()) {
        problems.push_back("and " +
                           std::to_string(scanner.unreadable_count - scanner.unreadable.size()) +
                           " more processes unreadable");
      }
      for (auto& [pid, entry] : scanner.hits) {
        std::sort(entry.second.begin(), entry.second.end());
        entry.second.erase(std::unique(entry.second.begin(), entry.second.end()),
                           entry.second.end());
        for (std::size_t idx : entry.second) {
          report.in_use.push_back(rel_paths[idx]);
          report.holders.push_back(InUseHolder{pid, entry.first, rel_paths[idx]});
        }
      }
    }

    std::sort(report.in_use.begin(), report.in_use.end());
    report.in_use.erase(std::unique(report.in_use.begin(), report.in_use.end()),
                        report.in_use.end());
    std::sort(report.holders.begin(), report.holders.end(),
              [](const InUseHolder& a, const InUseHolder& b) {
                return std::tie(a.path, a.pid) < std::tie(b.path, b.pid);
              });
    if (!problems.empty()) {
      report.complete = false;
      report.incomplete_reason = "proc probe could not inspect everything: ";
      for (std::size_t i = 0; i < problems.size(); ++i) {
        if (i) report.incomplete_reason += "; ";
        report.incomplete_reason += problems[i];
      }
    }
    return report;
  }

 private:
  std::string proc_root_;
};

}  // namespace

std::unique_ptr<InUseProbe> MakeProcProbe(std::string proc_root) {
  return std::make_unique<ProcProbe>(std::move(proc_root));
}

}  // namespace despool::workers
