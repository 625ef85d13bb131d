// Helpers for the refresh-engine tests: temp dirs, tree builders, exact tree snapshots, fakes.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "support/test_support.h"
#include "despool/workers/engine.h"

namespace despool::enginetest {

namespace fs = std::filesystem;

using testsupport::TempDir;
// The engine's names every engine test uses.
using workers::CancelToken;
using workers::Engine;
using workers::EngineConfig;
using workers::FaultInjectingOs;
using workers::FaultRule;
using workers::OutcomeKind;
using workers::RefreshOutcome;

inline void SetMtime(const std::string& path, std::int64_t sec, long nsec = 0) {
  struct timespec ts[2] = {{0, UTIME_OMIT}, {static_cast<time_t>(sec), nsec}};
  if (::utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW) != 0) {
    throw std::runtime_error("utimensat " + path + ": " + std::strerror(errno));
  }
}

inline void WriteFile(const std::string& path, const std::string& content, mode_t mode = 0644,
                      std::int64_t mtime_sec = 1700000000) {
  fs::create_directories(fs::path(path).parent_path());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n <= 0) throw std::runtime_error("write " + path);
    off += static_cast<size_t>(n);
  }
  ::close(fd);
  ::chmod(path.c_str(), mode);
  SetMtime(path, mtime_sec);
}

inline std::string ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("open " + path + ": " + std::strerror(errno));
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

// Deterministic content of a given size.
inline std::string Content(const std::string& seed, size_t size) {
  std::string out(size, '\0');
  std::uint64_t x = std::hash<std::string>{}(seed) | 1;
  for (size_t i = 0; i < size; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<char>(x);
  }
  return out;
}

struct Node {
  char type = '?';  // f d l
  mode_t mode = 0;
  std::int64_t mtime_ns = 0;
  std::string data;  // file content or link target
  ino_t ino = 0;
  bool operator==(const Node& o) const {
    return type == o.type && mode == o.mode && mtime_ns == o.mtime_ns && data == o.data;
  }
};
using Snapshot = std::map<std::string, Node>;

// Every entry below `dir` (and "." for dir itself), with content; never follows symlinks.
inline Snapshot Snap(const std::string& dir) {
  Snapshot out;
  auto add = [&](const std::string& rel, const std::string& full) {
    struct stat st;
    if (::lstat(full.c_str(), &st) != 0) throw std::runtime_error("lstat " + full);
    Node n;
    n.mode = st.st_mode & 07777;
    n.mtime_ns = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    n.ino = st.st_ino;
    if (S_ISREG(st.st_mode)) {
      n.type = 'f';
      n.data = ReadFile(full);
    } else if (S_ISDIR(st.st_mode)) {
      n.type = 'd';
    } else if (S_ISLNK(st.st_mode)) {
      n.type = 'l';
      n.mode = 0;
      n.data = fs::read_symlink(full).string();
    } else {
      n.type = 'x';
    }
    out[rel] = n;
  };
  add(".", dir);
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    add(it->path().lexically_relative(dir).string(), it->path().string());
  }
  return out;
}

// Copies the tree `from` to `to` (symlinks as links); its files and directories keep their
// mtimes, its symlinks get new ones (as a publisher's copy of a version would).
inline void CopyTree(const std::string& from, const std::string& to) {
  fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::copy_symlinks);
  for (const auto& [rel, node] : Snap(from)) {
    if (node.type != 'l') SetMtime(to + "/" + rel, node.mtime_ns / 1000000000, node.mtime_ns % 1000000000);
  }
}

// "" when equal, else a description of the first differences.
inline std::string Diff(const Snapshot& want, const Snapshot& got) {
  std::ostringstream o;
  int n = 0;
  for (const auto& [k, v] : want) {
    auto it = got.find(k);
    if (it == got.end()) {
      o << "missing " << k << "\n";
    } else if (!(it->second == v)) {
      o << "differs " << k << " (type " << v.type << "/" << it->second.type << ", mode " << std::oct
        << v.mode << "/" << it->second.mode << std::dec << ", mtime " << v.mtime_ns << "/"
        << it->second.mtime_ns << ", size " << v.data.size() << "/" << it->second.data.size()
        << ")\n";
    } else {
      continue;
    }
    if (++n > 10) break;
  }
  for (const auto& [k, v] : got) {
    if (!want.count(k)) {
      o << "extra " << k << "\n";
      if (++n > 10) break;
    }
  }
  return o.str();
}

// A package version: `files` files over a few dirs, sizes depending on the version.
struct TreeOptions {
  int files = 12;
  int dirs = 3;
  bool symlink = true;
  bool empty_dir = true;
  size_t base_size = 1000;
};
inline void MakeVersion(const std::string& dir, std::uint64_t version, TreeOptions opt = {}) {
  fs::create_directories(dir);
  for (int i = 0; i < opt.files; ++i) {
    std::string rel = (i % opt.dirs == 0 ? std::string() : "d" + std::to_string(i % opt.dirs) + "/") +
                      "f" + std::to_string(i) + ".bin";
    size_t size = opt.base_size + static_cast<size_t>(i) * 37 + static_cast<size_t>(version) * 7;
    WriteFile(dir + "/" + rel, Content(rel + "@" + std::to_string(version), size),
              i % 5 == 0 ? 0755 : 0644, 1700000000 + static_cast<std::int64_t>(version));
  }
  if (opt.symlink) {
    fs::create_directories(dir + "/d1");
    fs::create_symlink("../f0.bin", dir + "/d1/link-to-f0");
    SetMtime(dir + "/d1/link-to-f0", 1600000000);
  }
  if (opt.empty_dir) fs::create_directories(dir + "/empty");
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    if (it->is_directory() && !it->is_symlink()) SetMtime(it->path().string(), 1650000000);
  }
  SetMtime(dir, 1650000001);
}

// Everything under ROOT/.despool that is not expected at rest: journals, staging, trash, temp
// files, check scratch dirs, manifests of other packages. "" when clean.
inline std::string Strays(const std::string& root, const std::string& pkg,
                          bool allow_staged = false) {
  std::ostringstream o;
  std::string meta = root + "/.despool";
  if (!fs::exists(meta)) return "";
  for (auto it = fs::recursive_directory_iterator(meta); it != fs::recursive_directory_iterator();
       ++it) {
    std::string rel = it->path().lexically_relative(meta).string();
    if (rel == "staging" || rel == "state" || rel == "journal" || rel == "trash" ||
        rel == "locks" || rel == "check") {
      continue;
    }
    if (rel == "state/" + pkg + ".manifest" || rel == "locks/" + pkg + ".lock") continue;
    if (rel == "staging/" + pkg + "@spare") {  // the retired tree, kept as the next base
      it.disable_recursion_pending();
      continue;
    }
    if (allow_staged && rel.rfind("staging/" + pkg + "@", 0) == 0) {
      it.disable_recursion_pending();
      continue;
    }
    o << rel << "\n";
    it.disable_recursion_pending();
  }
  // Nothing but the package (and .despool) at the top.
  for (const auto& e : fs::directory_iterator(root)) {
    std::string name = e.path().filename().string();
    if (name != ".despool" && name != pkg) o << "top-level " << name << "\n";
  }
  return o.str();
}

// A probe with a scripted answer; records what it was asked.
class FakeProbe : public workers::InUseProbe {
 public:
  const char* name() const override { return "fake"; }
  Result<workers::InUseReport> Check(int, const std::vector<std::string>& paths) override {
    std::lock_guard lock(mu);
    asked.push_back(paths);
    if (fail) return MakeError(ErrorCode::kIo, "fake probe failure");
    workers::InUseReport r = report;
    return r;
  }
  std::mutex mu;
  std::vector<std::vector<std::string>> asked;
  workers::InUseReport report;  // default: nothing in use, complete
  bool fail = false;
};

inline workers::RefreshRequest Request(const std::string& root, std::uint64_t version,
                                       const std::string& source, const std::string& pkg = "pkg") {
  workers::RefreshRequest r;
  r.dp_root = root;
  r.package_id = pkg;
  r.version = version;
  r.source_dir = source;
  return r;
}

}  // namespace despool::enginetest
