#include "prefetch.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "fsutil.h"
#include "scan.h"

namespace despool::workers::internal {
namespace {

// The hints' system calls: the real ones, never a test's injected Os (see prefetch.h).
Os& Sys() { return RealOs(); }

// The names in the directory open as `fd` that may be directories (the listing is the point):
// DT_DIR, or DT_UNKNOWN on filesystems that do not say (opening it with O_DIRECTORY tells).
std::vector<std::string> ListSubdirs(int fd) {
  std::vector<DirEntry> entries;
  std::vector<std::string> subdirs;
  if (Sys().ReadDir(fd, &entries) != 0) return subdirs;
  for (auto& e : entries) {
    if (e.type == DT_DIR || e.type == DT_UNKNOWN) subdirs.push_back(std::move(e.name));
  }
  return subdirs;
}

// Lists the directory `name` in dirfd and every directory below it; how many it listed.
std::size_t PrefetchTree(int dirfd, const std::string& name, int depth,
                         const std::stop_token& stop) {
  if (depth > kMaxDepth || stop.stop_requested()) return 0;
  auto dir = OpenDir(Sys(), dirfd, name);
  if (!dir.ok()) return 0;  // not a directory (DT_UNKNOWN), a symlink, gone
  std::size_t listed = 1;
  for (const auto& sub : ListSubdirs(dir->get())) {
    listed += PrefetchTree(dir->get(), sub, depth + 1, stop);
  }
  return listed;
}

}  // namespace

std::size_t PrefetchDirectories(int dirfd, int ways, std::stop_token stop) {
  const std::vector<std::string> top = ListSubdirs(dirfd);
  std::atomic<std::size_t> listed{1};
  (void)RunOnThreads(top.size(), ways, [&](std::size_t i) {
    listed += PrefetchTree(dirfd, top[i], 1, stop);
    return Status::Ok();
  });
  return listed;
}

FileHint PrefetchFile(int dirfd, const std::string& path) {
  struct open_how how {};
  how.flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  Fd fd(&Sys(), static_cast<int>(::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how)));
  if (!fd.valid()) {
    return errno == ENOSYS || errno == EPERM ? FileHint::kNoOpenat2 : FileHint::kNotStarted;
  }
  struct stat st;
  return ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) &&
                 ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_WILLNEED) == 0
             ? FileHint::kStarted
             : FileHint::kNotStarted;
}

std::size_t PrefetchFiles(int dirfd, const std::vector<std::string>& paths, std::stop_token stop) {
  std::size_t started = 0;
  for (const auto& path : paths) {
    if (stop.stop_requested()) break;
    const FileHint h = PrefetchFile(dirfd, path);
    if (h == FileHint::kNoOpenat2) break;
    started += h == FileHint::kStarted;
  }
  return started;
}

}  // namespace despool::workers::internal
