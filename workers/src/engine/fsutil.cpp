#include "fsutil.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <exception>
#include <system_error>
#include <thread>

namespace despool::workers::internal {

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t start = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n') {
      lines.push_back(text.substr(start, i - start));
      start = i + 1;
    }
  }
  return lines;
}

std::int64_t MtimeNs(const struct stat& st) {
  return static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
}

Result<Fd> OpenDir(Os& os, int dirfd, const std::string& name) {
  int fd = os.OpenAt(dirfd, name.c_str(), kDirFlags, 0);
  if (fd < 0) return SysError("open directory " + name, errno);
  return Fd(&os, fd);
}

Result<Fd> MakeDir(Os& os, int dirfd, const std::string& name, mode_t mode) {
  if (os.MkdirAt(dirfd, name.c_str(), mode) != 0 && errno != EEXIST) {
    return SysError("mkdir " + name, errno);
  }
  return OpenDir(os, dirfd, name);
}

Result<std::string> ReadSmallFile(Os& os, int dirfd, const std::string& name) {
  int raw = os.OpenAt(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW, 0);
  if (raw < 0) return SysError("open " + name, errno);
  Fd fd(&os, raw);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = os.Read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SysError("read " + name, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > (1u << 30)) return MakeError(ErrorCode::kResourceExhausted, name + " too big");
  }
  return out;
}

namespace {

// Creates `name` and writes `data`; the open descriptor, or an error after removing the file.
Result<Fd> WriteNew(Os& os, int dirfd, const std::string& name, std::string_view data) {
  int raw = os.OpenAt(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0644);
  if (raw < 0) return SysError("create " + name, errno);
  Fd fd(&os, raw);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = os.Write(fd.get(), data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      fd.Reset();
      os.UnlinkAt(dirfd, name.c_str(), 0);
      return SysError("write " + name, err);
    }
    off += static_cast<size_t>(n);
  }
  return fd;
}

}  // namespace

Status WriteFileUnsynced(Os& os, int dirfd, const std::string& name, std::string_view data) {
  auto fd = WriteNew(os, dirfd, name, data);
  if (!fd.ok()) return fd.take_error();
  return Status::Ok();
}

Status WriteFileAtomic(Os& os, int dirfd, const std::string& name, std::string_view data) {
  std::string tmp = name + ".tmp";
  DESPOOL_ASSIGN_OR_RETURN(Fd fd, WriteNew(os, dirfd, tmp, data));
  if (os.Fsync(fd.get()) != 0) {
    int err = errno;
    fd.Reset();
    os.UnlinkAt(dirfd, tmp.c_str(), 0);
    return SysError("fsync " + tmp, err);
  }
  fd.Reset();
  if (os.RenameAt2(dirfd, tmp.c_str(), dirfd, name.c_str(), 0) != 0) {
    int err = errno;
    os.UnlinkAt(dirfd, tmp.c_str(), 0);
    return SysError("rename " + tmp, err);
  }
  if (os.Fsync(dirfd) != 0) return SysError("fsync directory of " + name, errno);
  return Status::Ok();
}

Status RemoveChildren(Os& os, int dirfd) {
  std::vector<DirEntry> entries;
  if (os.ReadDir(dirfd, &entries) != 0) return SysError("readdir", errno);
  for (const auto& e : entries) {
    unsigned char type = e.type;
    if (type == DT_UNKNOWN) {
      struct stat st;
      if (os.FstatAt(dirfd, e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        return SysError("stat " + e.name, errno);
      }
      type = S_ISDIR(st.st_mode) ? DT_DIR : DT_REG;
    }
    if (type == DT_DIR) {
      DESPOOL_RETURN_IF_ERROR(RemoveTree(os, dirfd, e.name));
    } else if (os.UnlinkAt(dirfd, e.name.c_str(), 0) != 0 && errno != ENOENT) {
      return SysError("unlink " + e.name, errno);
    }
  }
  return Status::Ok();
}

Status RemoveTree(Os& os, int dirfd, const std::string& name) {
  if (os.UnlinkAt(dirfd, name.c_str(), 0) == 0) return Status::Ok();
  if (errno == ENOENT) return Status::Ok();
  if (errno != EISDIR && errno != EPERM) return SysError("unlink " + name, errno);
  int raw = os.OpenAt(dirfd, name.c_str(), kDirFlags, 0);
  if (raw < 0) {
    if (errno == ENOENT) return Status::Ok();
    return SysError("open " + name, errno);
  }
  {
    Fd fd(&os, raw);
    struct stat st;
    // A staged or retired dir may carry a read-only mode from the source: we own it.
    if (os.Fstat(fd.get(), &st) == 0 && (st.st_mode & S_IRWXU) != S_IRWXU) {
      os.Fchmod(fd.get(), (st.st_mode & 07777) | S_IRWXU);
    }
    DESPOOL_RETURN_IF_ERROR(RemoveChildren(os, fd.get()));
  }
  if (os.UnlinkAt(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return SysError("rmdir " + name, errno);
  }
  return Status::Ok();
}

namespace {

using StatMap = std::unordered_map<std::string, struct stat>;

// Stats the entries of one directory into `out`, keyed under `prefix` (one that vanished
// meanwhile is skipped); the names of the directories among them go to `dirs`.
Status StatLevel(Os& os, int dirfd, const std::string& prefix, StatMap* out, std::vector<std::string>* dirs) {
  std::vector<DirEntry> entries;
  if (os.ReadDir(dirfd, &entries) != 0) return SysError("readdir " + prefix, errno);
  for (const auto& e : entries) {
    struct stat st;
    if (os.FstatAt(dirfd, e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) continue;
      return SysError("stat " + Join(prefix, e.name), errno);
    }
    (*out)[Join(prefix, e.name)] = st;
    if (S_ISDIR(st.st_mode)) dirs->push_back(e.name);
  }
  return Status::Ok();
}

// WalkTree below each of `dirs` (names in the directory open as dirfd, itself at `prefix`).
Status WalkDirs(Os& os, int dirfd, const std::string& prefix, const std::vector<std::string>& dirs, StatMap* out) {
  for (const auto& d : dirs) {
    DESPOOL_ASSIGN_OR_RETURN(Fd sub, OpenDir(os, dirfd, d));
    DESPOOL_RETURN_IF_ERROR(WalkTree(os, sub.get(), out, Join(prefix, d)));
  }
  return Status::Ok();
}

}  // namespace

Status WalkTree(Os& os, int dirfd, StatMap* out, const std::string& prefix) {
  std::vector<std::string> dirs;
  DESPOOL_RETURN_IF_ERROR(StatLevel(os, dirfd, prefix, out, &dirs));
  return WalkDirs(os, dirfd, prefix, dirs, out);
}

std::vector<Status> RunOnThreads(std::size_t n, int ways, const std::function<Status(std::size_t)>& fn) {
  std::vector<Status> results(n, Status::Ok());
  // An exception (a fault-injection "crash" in tests) stops the work and is rethrown here, on
  // the calling thread, once every thread has been joined.
  std::vector<std::exception_ptr> thrown(n);
  std::atomic<std::size_t> next{0};
  std::atomic<bool> stop{false};
  auto work = [&] {
    for (std::size_t i = next++; i < n && !stop; i = next++) {
      try {
        results[i] = fn(i);
      } catch (...) {
        thrown[i] = std::current_exception();
        stop = true;
      }
    }
  };
  std::vector<std::thread> helpers;
  const std::size_t extra = ways > 1 ? std::min<std::size_t>(static_cast<std::size_t>(ways) - 1, n) : 0;
  for (std::size_t t = 0; t < extra; ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones running (this one at least) do the rest
    }
  }
  work();
  for (auto& h : helpers) h.join();
  for (const auto& e : thrown) {
    if (e) std::rethrow_exception(e);
  }
  return results;
}

bool SubtreeLooksCold(std::size_t entries, std::int64_t elapsed_ns) {
  return entries > 0 && elapsed_ns / static_cast<std::int64_t>(entries) > kColdSubtreeEntryNs;
}

bool TopLevelLooksCold(std::size_t entries, std::int64_t elapsed_ns) {
  return entries > 0 && elapsed_ns / static_cast<std::int64_t>(entries) > kColdStatNs;
}

Status WalkTreeOnThreads(Os& os, int dirfd, StatMap* out, int ways, bool* cold,
                         const std::function<void()>& on_cold) {
  if (cold != nullptr) *cold = false;
  if (ways <= 1) return WalkTree(os, dirfd, out);
  // The top level here; the directories in it on `ways` threads if it found cold caches, each
  // into a map of its own.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> dirs;
  const std::size_t before = out->size();
  DESPOOL_RETURN_IF_ERROR(StatLevel(os, dirfd, "", out, &dirs));
  bool found_cold = TopLevelLooksCold(out->size() - before, NsSince(t0));
  if (!found_cold && !dirs.empty()) {
    // Top level warm: the first directory's subtree here, timed (SubtreeLooksCold).
    const auto t1 = std::chrono::steady_clock::now();
    const std::size_t before_first = out->size();
    DESPOOL_RETURN_IF_ERROR(WalkDirs(os, dirfd, "", {dirs.front()}, out));
    found_cold = SubtreeLooksCold(out->size() - before_first, NsSince(t1));
    dirs.erase(dirs.begin());
  }
  if (cold != nullptr) *cold = found_cold;
  if (!found_cold) return WalkDirs(os, dirfd, "", dirs, out);
  if (on_cold) on_cold();
  std::vector<StatMap> below(dirs.size());
  const auto statuses = RunOnThreads(dirs.size(), ways, [&](std::size_t i) -> Status {
    DESPOOL_ASSIGN_OR_RETURN(Fd sub, OpenDir(os, dirfd, dirs[i]));
    return WalkTree(os, sub.get(), &below[i], dirs[i]);
  });
  for (const auto& st : statuses) {
    if (!st.ok()) return st;
  }
  std::size_t total = out->size();
  for (const auto& m : below) total += m.size();
  out->reserve(total);
  for (auto& m : below) out->merge(m);
  return Status::Ok();
}

}  // namespace despool::workers::internal

namespace despool::workers::internal {
Result<Fd> OpenBeneath(Os& os, int dirfd, const std::string& rel, int flags) {
  Fd cur;
  int at = dirfd;
  size_t start = 0;
  for (;;) {
    size_t slash = rel.find('/', start);
    std::string comp = rel.substr(start, slash == std::string::npos ? std::string::npos
                                                                    : slash - start);
    if (slash == std::string::npos) {
      int fd = os.OpenAt(at, comp.c_str(), flags | O_NOFOLLOW, 0);
      if (fd < 0) return SysError("open " + rel, errno);
      return Fd(&os, fd);
    }
    int fd = os.OpenAt(at, comp.c_str(), kDirFlags, 0);
    if (fd < 0) return SysError("open " + rel, errno);
    cur = Fd(&os, fd);
    at = cur.get();
    start = slash + 1;
  }
}
}  // namespace despool::workers::internal
