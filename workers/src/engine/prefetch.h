// Cache hints for a refresh that finds the caches cold (internal).
//
// They change nothing on disk and decide nothing, so they make their system calls through
// RealOs(), never through the Os the engine was given: whether they run at all depends on how
// long stats took, and the crash tests enumerate a refresh's Os calls, which must not vary with
// cache timing. Every
// error is ignored (the walk that follows reads what it needs either way). Both stop early,
// between two files or directories, once `stop` is requested.
#pragma once

#include <cstddef>
#include <stop_token>
#include <string>
#include <vector>

namespace despool::workers::internal {

// Reads every directory below `dirfd` (entries only; symlinks are never followed), the
// subtrees of its top-level directories on up to `ways` threads. Why: a staging walk lists
// the directories of its base tree one at a time, and cold each listing waits for the disk
// (100 directories: ~30 ms of a cold incremental refresh); read ahead on several threads they
// are in the cache when the walk comes to them. Returns how many directories it listed.
std::size_t PrefetchDirectories(int dirfd, int ways, std::stop_token stop = {});

// Starts reading the regular files at `paths` (relative to `dirfd`, resolved beneath it with no
// symlink followed) into the page cache and returns without waiting for the reads, so that
// the device has them all in flight instead of one per copying thread. Returns how many reads
// it started (a path it could not open that way, or not a regular file, starts none).
std::size_t PrefetchFiles(int dirfd, const std::vector<std::string>& paths,
                          std::stop_token stop = {});

// PrefetchFiles for one path. Thread-safe. kNoOpenat2: openat2 is missing (kernel < 5.6) or
// refused (a seccomp filter), so no file can be hinted.
enum class FileHint { kStarted, kNotStarted, kNoOpenat2 };
FileHint PrefetchFile(int dirfd, const std::string& path);

}  // namespace despool::workers::internal
