// The manifest of an installed (or staged) package version: what ROOT/<package>/ must hold.
//
// Stored as text under ROOT/.despool/state/<package>.manifest (and next to a staged tree), one
// entry per line, paths percent-escaped, with a trailing checksum line so a truncated or
// corrupted file is detected (kCorruption) rather than trusted.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "despool/common/result.h"

namespace despool::workers {

enum class EntryType : char { kDir = 'd', kFile = 'f', kSymlink = 'l' };

struct ManifestEntry {
  std::string path;          // relative to the package dir; "." is the package dir itself
  EntryType type = EntryType::kFile;
  mode_t mode = 0;           // permission bits (07777); 0 for symlinks
  std::int64_t mtime_ns = 0; // nanoseconds since the epoch
  std::uint64_t size = 0;    // files only
  std::uint64_t hash = 0;    // files only: XXH3_64bits of the content
  std::string target;        // symlinks only: the link text (relative, stays in the package)

  bool operator==(const ManifestEntry&) const = default;
};

struct Manifest {
  std::string package;
  std::uint64_t version = 0;
  std::string source;        // the absolute source directory this version was staged from
  std::vector<ManifestEntry> entries;  // sorted by path (bytewise); parents before children

  std::uint64_t file_count() const;
  std::uint64_t total_bytes() const;
  // Index of the entry with this path, or -1 (binary search: entries must be sorted).
  std::ptrdiff_t Find(std::string_view path) const;
};

std::string SerializeManifest(const Manifest& manifest);
Result<Manifest> ParseManifest(std::string_view text);
// The version alone, with the same integrity check as ParseManifest (trailer checksum, header)
// but without parsing the entries (the idempotence check runs on every request).
Result<std::uint64_t> ParseManifestVersion(std::string_view text);

// Sorts entries bytewise by path (the order Serialize expects and Find relies on).
void SortEntries(std::vector<ManifestEntry>* entries);

}  // namespace despool::workers
