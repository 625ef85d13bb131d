// Path resolution shared by the in-use probes: see inuse_internal.h.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "inuse_internal.h"

namespace despool::workers::inuse_internal {

Status ValidateRelPath(std::string_view rel) {
  if (rel.empty() || rel.front() == '/') {
    return MakeError(
        ErrorCode::kInvalidArgument,
        "in-use probe: path must be relative and non-empty: '" + std::string(rel) + "'");
  }
  std::size_t start = 0;
  while (start <= rel.size()) {
    std::size_t end = rel.find('/', start);
    if (end == std::string_view::npos) end = rel.size();
    std::string_view part = rel.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") {
      return MakeError(ErrorCode::kInvalidArgument,
                       "in-use probe: bad path component in '" + std::string(rel) + "'");
    }
    start = end + 1;
  }
  return Status::Ok();
}

DirWalker::~DirWalker() {
  for (auto& [path, fd] : dirs_) {
    if (fd >= 0) ::close(fd);
  }
}

Result<int> DirWalker::OpenDir(std::string_view dir_path) {
  if (dir_path.empty()) return root_fd_;
  if (auto it = dirs_.find(std::string(dir_path)); it != dirs_.end()) return it->second;
  // Open the parent first (recursively, cached), then this component relative to it.
  std::size_t slash = dir_path.rfind('/');
  std::string_view parent =
      slash == std::string_view::npos ? std::string_view() : dir_path.substr(0, slash);
  std::string name(slash == std::string_view::npos ? dir_path : dir_path.substr(slash + 1));
  DESPOOL_ASSIGN_OR_RETURN(int parent_fd, OpenDir(parent));
  int fd = -1;
  if (parent_fd >= 0) {
    fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      // Gone, not a directory, or a symlink (never followed): nothing below it is in use.
      if (err != ENOENT && err != ENOTDIR && err != ELOOP) {
        return SysError("in-use probe: open directory '" + std::string(dir_path) + "'", err);
      }
    }
  }
  dirs_.emplace(std::string(dir_path), fd);
  return fd;
}

Result<DirWalker::Leaf> DirWalker::Resolve(std::string_view rel) {
  std::size_t slash = rel.rfind('/');
  Leaf leaf;
  leaf.name = slash == std::string_view::npos ? rel : rel.substr(slash + 1);
  DESPOOL_ASSIGN_OR_RETURN(
      int dirfd,
      OpenDir(slash == std::string_view::npos ? std::string_view() : rel.substr(0, slash)));
  leaf.dirfd = dirfd;
  leaf.gone = dirfd < 0;
  return leaf;
}

}  // namespace despool::workers::inuse_internal
