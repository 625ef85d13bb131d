// Source scanning and validation (internal).
#pragma once

#include <sys/stat.h>

#include <functional>
#include <string>
#include <vector>

#include "despool/common/result.h"
#include "despool/workers/manifest.h"
#include "despool/workers/os.h"

namespace despool::workers::internal {

// Deeper trees are refused (each level holds descriptors while staging).
inline constexpr int kMaxDepth = 128;

struct SrcEntry {
  std::string path;      // relative; "." for the root
  std::string name;      // last component ("." for the root)
  int parent = -1;       // index of the parent directory entry (-1 for the root)
  int depth = 0;
  EntryType type = EntryType::kDir;
  struct stat st {};
  std::string target;    // symlinks
};

// Walks the source tree below src_fd (never following symlinks) in depth-first order, children
// sorted by name; entries[0] is the root. kInvalidArgument (permanent) for hostile content:
// devices, FIFOs, sockets, bad or oversized paths, too deep, symlinks that are absolute or
// resolve outside the package. OS errors are returned errno-classed.
// ways > 1: the subtrees of the top-level directories are scanned on up to that many threads
// (see WalkTreeOnThreads: more inode reads in flight with cold caches); the result is that of
// one thread (with several hostile entries, the error may name another one of them).
// `cold`, when given and ways > 1, tells whether the scan found the caches cold (the top
// level's stats, TopLevelLooksCold, or else the first subtree's, SubtreeLooksCold); with ways <= 1
// it is set false.
// `size_hint`: how many entries to expect (the installed manifest's; 0: unknown).
// `on_cold_file`, when given and ways > 1, is called for every regular file scanned once the
// scan knows the caches are cold (a subtree's files once that subtree is scanned), on the
// scan's threads, concurrently: it lets the caller start reading files it will copy while the
// scan, CPU-bound on cold inodes, goes on.
using ColdFileHook = std::function<void(const SrcEntry&)>;
Result<std::vector<SrcEntry>> ScanSource(Os& os, int src_fd, int ways = 1, bool* cold = nullptr,
                                         std::size_t size_hint = 0,
                                         const ColdFileHook& on_cold_file = nullptr);

// The symlink check alone (exposed for tests): every symlink, resolved physically through the
// other entries (following in-package symlinks), must stay inside the package.
Status ValidateSymlinks(const std::vector<SrcEntry>& entries);

}  // namespace despool::workers::internal
