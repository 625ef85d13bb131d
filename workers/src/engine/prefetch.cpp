#include "prefetch.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "fsutil.h"
#include "scan.h"

namespace despool::workers::internal {
namespace {

constexpr int kRawDirFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

// The names in the directory open as `fd` that may be directories (the listing is the point):
// DT_DIR, or DT_UNKNOWN on filesystems that do not say (opening it with O_DIRECTORY tells).
std::vector<std::string> ListSubdirs(int fd) {
  std::vector<std::string> subdirs;
  int own = ::openat(fd, ".", kRawDirFlags);  // its own offset (a dup would share fd's)
  if (own < 0) return subdirs;
  DIR* dir = ::fdopendir(own);
  if (dir == nullptr) {
    ::close(own);
    return subdirs;
  }
  while (const struct dirent* e = ::readdir(dir)) {
    if ((e->d_type != DT_DIR && e->d_type != DT_UNKNOWN) || std::strcmp(e->d_name, ".") == 0 ||
        std::strcmp(e->d_name, "..") == 0) {
      continue;
    }
    subdirs.emplace_back(e->d_name);
  }
  ::closedir(dir);
  return subdirs;
}

// Lists the directory `name` in dirfd and every directory below it; how many it listed.
std::size_t PrefetchTree(int dirfd, const std::string& name, int depth,
                         const std::stop_token& stop) {
  if (depth > kMaxDepth || stop.stop_requested()) return 0;
  int fd = ::openat(dirfd, name.c_str(), kRawDirFlags);
  if (fd < 0) return 0;  // not a directory (DT_UNKNOWN), a symlink, gone
  std::size_t listed = 1;
  for (const auto& sub : ListSubdirs(fd)) listed += PrefetchTree(fd, sub, depth + 1, stop);
  ::close(fd);
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

std::size_t PrefetchFiles(int dirfd, const std::vector<std::string>& paths, std::stop_token stop) {
  std::size_t started = 0;
  struct open_how how {};
  how.flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  for (const auto& path : paths) {
    if (stop.stop_requested()) break;
    int fd = static_cast<int>(::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how));
    if (fd < 0) {
      if (errno == ENOSYS || errno == EPERM) break;  // no openat2 (kernel < 5.6, a seccomp filter)
      continue;
    }
    struct stat st;
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED) == 0) {
      ++started;
    }
    ::close(fd);
  }
  return started;
}

}  // namespace despool::workers::internal
