// Internals shared by the in-use probes (inuse_*.cpp). Not a public header.
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>

#include "despool/common/result.h"

namespace despool::workers::inuse_internal {

// Checks a probe's rel path: relative, non-empty, no empty, "." or ".." components.
Status ValidateRelPath(std::string_view rel);

// Resolves package-relative paths to (parent dirfd, leaf name) without following any symlink:
// each intermediate directory is opened with O_DIRECTORY|O_NOFOLLOW relative to its parent and
// cached by its path, so sibling files reuse one descriptor. Owns the cached descriptors.
class DirWalker {
 public:
  explicit DirWalker(int root_fd) : root_fd_(root_fd) {}
  ~DirWalker();
  DirWalker(const DirWalker&) = delete;
  DirWalker& operator=(const DirWalker&) = delete;

  struct Leaf {
    int dirfd = -1;         // borrowed; valid while the walker lives; -1 when gone
    std::string_view name;  // a suffix of the rel path passed to Resolve (so NUL-terminated
                            // when that was a std::string)
    bool gone = false;      // a parent does not exist, is not a directory, or is a symlink
  };
  // rel must have passed ValidateRelPath. Errors: an intermediate directory that exists but
  // cannot be opened (EACCES, EMFILE...), as a SysError.
  Result<Leaf> Resolve(std::string_view rel);

 private:
  Result<int> OpenDir(std::string_view dir_path);  // -1 when gone
  int root_fd_;
  std::unordered_map<std::string, int> dirs_;  // parent path -> fd (-1: gone)
};

}  // namespace despool::workers::inuse_internal
