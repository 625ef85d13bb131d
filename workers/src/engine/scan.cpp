#include "scan.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <deque>
#include <unordered_map>

#include "despool/common/names.h"
#include "fsutil.h"

namespace despool::workers::internal {
namespace {

Error Hostile(const std::string& path, const std::string& why) {
  return MakeError(ErrorCode::kInvalidArgument, "refused source entry '" + path + "': " + why);
}

const char* TypeName(mode_t mode) {
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISSOCK(mode)) return "socket";
  return "unsupported file type";
}

// Appends the entries below out[self] (the directory open as dirfd) in depth-first order;
// with descend false only its own entries (the caller scans the directories among them).
Status ScanDir(Os& os, int dirfd, int self, std::vector<SrcEntry>* out, bool descend = true) {
  std::vector<DirEntry> children;
  if (os.ReadDir(dirfd, &children) != 0) {
    return SysError("read source directory " + (*out)[self].path, errno);
  }
  std::sort(children.begin(), children.end(),
            [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  for (const auto& c : children) {
    const SrcEntry& parent = (*out)[self];
    SrcEntry e;
    e.name = c.name;
    e.path = Join(parent.path, c.name);
    e.parent = self;
    e.depth = parent.depth + 1;
    if (c.name.size() > NAME_MAX) return Hostile(e.path.substr(0, 200), "name too long");
    if (auto s = ValidateRelativePath(e.path); !s.ok()) {
      return Hostile(e.path.substr(0, 200), s.error().message);
    }
    if (e.depth > kMaxDepth) return Hostile(e.path.substr(0, 200), "tree too deep");
    if (os.FstatAt(dirfd, c.name.c_str(), &e.st, AT_SYMLINK_NOFOLLOW) != 0) {
      return SysError("stat source " + e.path, errno);
    }
    if (S_ISREG(e.st.st_mode)) {
      e.type = EntryType::kFile;
    } else if (S_ISDIR(e.st.st_mode)) {
      e.type = EntryType::kDir;
    } else if (S_ISLNK(e.st.st_mode)) {
      e.type = EntryType::kSymlink;
      char buf[PATH_MAX + 1];
      ssize_t n = os.ReadlinkAt(dirfd, c.name.c_str(), buf, sizeof buf);
      if (n < 0) return SysError("readlink source " + e.path, errno);
      if (static_cast<size_t>(n) >= sizeof buf) return Hostile(e.path, "symlink target too long");
      e.target.assign(buf, static_cast<size_t>(n));
      if (e.target.empty()) return Hostile(e.path, "empty symlink");
      if (e.target[0] == '/') return Hostile(e.path, "absolute symlink -> " + e.target);
    } else {
      return Hostile(e.path, TypeName(e.st.st_mode));
    }
    out->push_back(std::move(e));
    int index = static_cast<int>(out->size()) - 1;
    if (descend && (*out)[index].type == EntryType::kDir) {
      int raw = os.OpenAt(dirfd, c.name.c_str(), kDirFlags, 0);
      if (raw < 0) return SysError("open source directory " + (*out)[index].path, errno);
      Fd sub(&os, raw);
      DESPOOL_RETURN_IF_ERROR(ScanDir(os, sub.get(), index, out));
    }
  }
  return Status::Ok();
}

std::vector<std::string> SplitPath(const std::string& p) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i <= p.size(); ++i) {
    if (i == p.size() || p[i] == '/') {
      if (i > start) out.push_back(p.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

std::string JoinParts(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) {
    if (!out.empty()) out.push_back('/');
    out += p;
  }
  return out.empty() ? "." : out;
}

}  // namespace

Status ValidateSymlinks(const std::vector<SrcEntry>& entries) {
  bool any = std::any_of(entries.begin(), entries.end(),
                         [](const SrcEntry& e) { return e.type == EntryType::kSymlink; });
  if (!any) return Status::Ok();
  std::unordered_map<std::string, const SrcEntry*> by_path;
  for (const auto& e : entries) by_path.emplace(e.path, &e);
  for (const auto& e : entries) {
    if (e.type != EntryType::kSymlink) continue;
    // Physical resolution as the kernel would do it inside the installed package: `where` is the
    // directory reached so far (components below the package root).
    std::vector<std::string> where = SplitPath(e.path);
    where.pop_back();  // the link's own directory
    std::deque<std::string> pending;
    for (auto& c : SplitPath(e.target)) pending.push_back(std::move(c));
    int hops = 0;
    bool exists = true;  // false once resolution left the known tree (dangling)
    while (!pending.empty()) {
      std::string c = std::move(pending.front());
      pending.pop_front();
      if (c == ".") continue;
      if (c == "..") {
        if (where.empty()) return Hostile(e.path, "symlink leaves the package -> " + e.target);
        where.pop_back();
        continue;
      }
      where.push_back(c);
      if (!exists) continue;
      auto it = by_path.find(JoinParts(where));
      if (it == by_path.end()) {
        exists = false;
        continue;
      }
      const SrcEntry* hit = it->second;
      if (hit->type == EntryType::kSymlink) {
        if (++hops > 40) return Hostile(e.path, "symlink loop");
        if (hit->target[0] == '/') return Hostile(e.path, "symlink through an absolute symlink");
        where.pop_back();
        auto parts = SplitPath(hit->target);
        for (auto r = parts.rbegin(); r != parts.rend(); ++r) pending.push_front(*r);
      }
    }
  }
  return Status::Ok();
}

namespace {

// The subtrees of the top-level directories in `*out` (the root and its own entries), scanned
// and placed in depth-first order after their directories. On up to `ways` threads when the top
// level found the caches cold (`top_cold`), or else when the first subtree, scanned here first
// and timed, looks cold (SubtreeLooksCold); *cold says which. A subtree scanned apart goes into
// a vector of its own that starts with a copy of its directory's entry, then is spliced in:
// local index k lands at g + k, g being its directory's place. Warm, the subtrees not yet
// scanned are scanned on this thread straight into the result (no vectors of their own: the
// memory a refresh touches for the first time costs page faults, and on this VM more).
// `size_hint`: the entries expected (0: unknown). Cold, `on_cold_file` gets the top level's
// files, then each subtree's once it is scanned.
Status ScanSubtrees(Os& os, int src_fd, int ways, bool top_cold, std::size_t size_hint,
                    std::vector<SrcEntry>* out, bool* cold, const ColdFileHook& on_cold_file) {
  std::vector<SrcEntry> top = std::move(*out);
  std::vector<std::size_t> dirs;
  for (std::size_t i = 1; i < top.size(); ++i) {
    if (top[i].type == EntryType::kDir) dirs.push_back(i);
  }
  std::vector<std::vector<SrcEntry>> below(dirs.size());
  auto hint = [&](const std::vector<SrcEntry>& entries) {
    if (!on_cold_file) return;
    for (const auto& e : entries) {
      if (e.type == EntryType::kFile) on_cold_file(e);
    }
  };
  auto scan_apart = [&](std::size_t d) -> Status {
    const SrcEntry& dir = top[dirs[d]];
    below[d].push_back(dir);
    int raw = os.OpenAt(src_fd, dir.name.c_str(), kDirFlags, 0);
    if (raw < 0) return SysError("open source directory " + dir.path, errno);
    Fd sub(&os, raw);
    return ScanDir(os, sub.get(), 0, &below[d]);
  };
  *cold = top_cold;
  std::size_t apart = 0;  // subtrees [0, apart) are scanned into `below`
  if (!top_cold && ways > 1 && !dirs.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    DESPOOL_RETURN_IF_ERROR(scan_apart(0));
    *cold = SubtreeLooksCold(below[0].size() - 1, NsSince(t0));
    apart = 1;
  }
  if (*cold) {
    hint(top);
    if (apart == 1) hint(below[0]);
    const auto statuses = RunOnThreads(dirs.size() - apart, ways, [&](std::size_t d) {
      Status s = scan_apart(apart + d);
      if (s.ok()) hint(below[apart + d]);
      return s;
    });
    for (const auto& st : statuses) {
      if (!st.ok()) return st;  // the first subtree in depth-first order that failed
    }
    apart = dirs.size();
  }
  std::size_t total = top.size();
  for (const auto& b : below) total += b.empty() ? 0 : b.size() - 1;
  out->clear();
  out->reserve(std::max(size_hint, total));
  out->push_back(std::move(top[0]));
  std::size_t d = 0;  // the next top-level directory
  for (std::size_t i = 1; i < top.size(); ++i) {
    const int g = static_cast<int>(out->size());
    out->push_back(std::move(top[i]));
    if (d == dirs.size() || dirs[d] != i) continue;
    if (d < apart) {
      auto& sub = below[d];
      for (std::size_t k = 1; k < sub.size(); ++k) {
        sub[k].parent += g;
        out->push_back(std::move(sub[k]));
      }
    } else {
      int raw = os.OpenAt(src_fd, (*out)[g].name.c_str(), kDirFlags, 0);
      if (raw < 0) return SysError("open source directory " + (*out)[g].path, errno);
      Fd sub(&os, raw);
      DESPOOL_RETURN_IF_ERROR(ScanDir(os, sub.get(), g, out));
    }
    ++d;
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<SrcEntry>> ScanSource(Os& os, int src_fd, int ways, bool* cold,
                                         std::size_t size_hint, const ColdFileHook& on_cold_file) {
  if (cold != nullptr) *cold = false;
  std::vector<SrcEntry> out;
  SrcEntry root;
  root.path = ".";
  root.name = ".";
  if (os.Fstat(src_fd, &root.st) != 0) return SysError("stat source root", errno);
  if (!S_ISDIR(root.st.st_mode)) return Hostile(".", "source is not a directory");
  out.reserve(size_hint);
  out.push_back(std::move(root));
  if (ways <= 1) {
    DESPOOL_RETURN_IF_ERROR(ScanDir(os, src_fd, 0, &out));
  } else {
    // The top level on this thread; the rest on `ways` threads only if it found cold caches.
    const auto t0 = std::chrono::steady_clock::now();
    DESPOOL_RETURN_IF_ERROR(ScanDir(os, src_fd, 0, &out, /*descend=*/false));
    const bool top_cold = TopLevelLooksCold(out.size() - 1, NsSince(t0));
    bool found_cold = false;
    DESPOOL_RETURN_IF_ERROR(
        ScanSubtrees(os, src_fd, ways, top_cold, size_hint, &out, &found_cold, on_cold_file));
    if (cold != nullptr) *cold = found_cold;
  }
  DESPOOL_RETURN_IF_ERROR(ValidateSymlinks(out));
  return out;
}

}  // namespace despool::workers::internal
