// Internal helpers of the refresh engine over the Os interface (not installed API).
#pragma once

#include <sys/stat.h>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "despool/common/result.h"
#include "despool/workers/os.h"

namespace despool::workers::internal {

// An owned descriptor, closed through the Os it came from.
class Fd {
 public:
  Fd() = default;
  Fd(Os* os, int fd) : os_(os), fd_(fd) {}
  Fd(Fd&& o) noexcept : os_(o.os_), fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      os_ = o.os_;
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { Reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) os_->Close(fd_);
    fd_ = -1;
  }

 private:
  Os* os_ = nullptr;
  int fd_ = -1;
};

// Flags for opening a directory below the DP root: never follows a symlink.
inline constexpr int kDirFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW;

// Opens `name` (one component or a relative path) as a directory; errno-classed error.
Result<Fd> OpenDir(Os& os, int dirfd, const std::string& name);
// mkdirat (EEXIST tolerated) then OpenDir.
Result<Fd> MakeDir(Os& os, int dirfd, const std::string& name, mode_t mode);

// Whole small file (manifests, journals). kNotFound when absent.
Result<std::string> ReadSmallFile(Os& os, int dirfd, const std::string& name);
// Writes name.tmp, fsyncs it, renames it over name, fsyncs the directory.
Status WriteFileAtomic(Os& os, int dirfd, const std::string& name, std::string_view data);
// Creates (or truncates) `name` with `data`, without any fsync (the caller makes it durable,
// e.g. with a syncfs); removes it on failure.
Status WriteFileUnsynced(Os& os, int dirfd, const std::string& name, std::string_view data);

// Removes a file, symlink or whole tree (never follows symlinks). Absent is fine.
Status RemoveTree(Os& os, int dirfd, const std::string& name);
// Removes every entry of the directory (not the directory itself).
Status RemoveChildren(Os& os, int dirfd);

// Stats of every entry below the directory, keyed by relative path ("." excluded), lstat-like.
Status WalkTree(Os& os, int dirfd, std::unordered_map<std::string, struct stat>* out,
                const std::string& prefix = "");

// WalkTree with the subtrees of the top-level directories walked on up to `ways` threads when
// the top level (TopLevelLooksCold), or else the first subtree (SubtreeLooksCold), shows the
// caches are cold. Why: cold, a walk waits on one inode-table read at a time, and more walks in
// flight read the same tree faster (a cold 100 x 100-file tree: 65 ms on 1 thread, 41 on 2, 31
// on 4); warm, the walk is CPU work and extra threads on a busy machine only add switching
// (engine_bench's warm repeats: +4 ms). The result is WalkTree's; ways <= 1 is WalkTree.
// `cold`, when given, tells whether it found the caches cold (always false with ways <= 1);
// `on_cold`, when given, is called on this thread as soon as it finds them so, before the walk
// goes on (to start reading ahead what will be needed next).
Status WalkTreeOnThreads(Os& os, int dirfd, std::unordered_map<std::string, struct stat>* out,
                         int ways, bool* cold = nullptr,
                         const std::function<void()>& on_cold = nullptr);

// Whether the `entries` stats of a tree's top level, which took `elapsed_ns`, found the caches
// cold: more than kColdStatNs each on average (the inodes came from the disk).
inline constexpr std::int64_t kColdStatNs = 20'000;
bool TopLevelLooksCold(std::size_t entries, std::int64_t elapsed_ns);

// The second look, when the top level seemed warm: a top level's directories are often
// created together, so their inodes share the few inode-table blocks one read brings in, while
// the files below them are spread (measured: a cold source whose top level averaged under
// 20 us per stat). The first top-level directory's subtree is walked on the calling thread and
// timed; cold when its entries (listing included) averaged more than kColdSubtreeEntryNs
// (engine_bench, 100-entry subtrees: warm 1.6-1.9 us, cold 9-82 us).
inline constexpr std::int64_t kColdSubtreeEntryNs = 5'000;
bool SubtreeLooksCold(std::size_t entries, std::int64_t elapsed_ns);

// Nanoseconds since `start` (steady clock): what the two tests above are given.
inline std::int64_t NsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
      .count();
}

// Runs fn(i) for i in [0, n) on up to `ways` threads (this one included); the statuses by i.
std::vector<Status> RunOnThreads(std::size_t n, int ways, const std::function<Status(std::size_t)>& fn);

std::int64_t MtimeNs(const struct stat& st);

// The '\n'-terminated lines of `text` (views into it); a last line without '\n' is dropped,
// so a record cut short by a crash never parses as complete.
std::vector<std::string_view> SplitLines(std::string_view text);

// The value of a header line "<key> <value>" (the manifest's, the journal's); nullopt when the
// line starts with another key.
inline std::optional<std::string_view> HeaderValue(std::string_view line, std::string_view key) {
  if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ' ') {
    return std::nullopt;
  }
  return line.substr(key.size() + 1);
}

// All of `s` as a number in `base`; false when empty, out of range or followed by anything.
template <typename T>
bool ParseNum(std::string_view s, T* out, int base = 10) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out, base);
  return ec == std::errc() && p == s.data() + s.size();
}
inline std::string Join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir == "." ? name : dir + "/" + name;
}

}  // namespace despool::workers::internal

namespace despool::workers::internal {
// Opens a path below dirfd one component at a time, never following a symlink (the last
// component is opened with `flags | O_NOFOLLOW`).
Result<Fd> OpenBeneath(Os& os, int dirfd, const std::string& rel, int flags);
}  // namespace despool::workers::internal
