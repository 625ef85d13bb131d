#include "despool/workers/manifest.h"

#include <xxhash.h>

#include <algorithm>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <optional>

#include "fsutil.h"

namespace despool::workers {
namespace {

constexpr std::string_view kMagic = "despool-manifest 1";

void Escape(std::string_view in, std::string* out) {
  static const char* hex = "0123456789ABCDEF";
  for (unsigned char c : in) {
    if (c <= 0x20 || c == 0x7f || c == '%') {
      out->push_back('%');
      out->push_back(hex[c >> 4]);
      out->push_back(hex[c & 15]);
    } else {
      out->push_back(static_cast<char>(c));
    }
  }
}

int HexVal(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

bool Unescape(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    int hi = HexVal(in[i + 1]), lo = HexVal(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

std::vector<std::string_view> SplitSpaces(std::string_view line) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (size_t i = 0; i <= line.size(); ++i) {
    if (i == line.size() || line[i] == ' ') {
      out.push_back(line.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

Error Corrupt(std::string what) {
  return MakeError(ErrorCode::kCorruption, "manifest: " + what);
}

using internal::HeaderValue;
using internal::ParseNum;

}  // namespace

std::uint64_t Manifest::file_count() const {
  std::uint64_t n = 0;
  for (const auto& e : entries) n += e.type == EntryType::kFile;
  return n;
}

std::uint64_t Manifest::total_bytes() const {
  std::uint64_t n = 0;
  for (const auto& e : entries) n += e.type == EntryType::kFile ? e.size : 0;
  return n;
}

std::ptrdiff_t Manifest::Find(std::string_view path) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), path,
                             [](const ManifestEntry& e, std::string_view p) { return e.path < p; });
  if (it == entries.end() || it->path != path) return -1;
  return it - entries.begin();
}

void SortEntries(std::vector<ManifestEntry>* entries) {
  std::sort(entries->begin(), entries->end(),
            [](const ManifestEntry& a, const ManifestEntry& b) { return a.path < b.path; });
}

std::string SerializeManifest(const Manifest& m) {
  std::string out;
  out.reserve(64 + m.entries.size() * 80);
  out += kMagic;
  out += "\npackage ";
  Escape(m.package, &out);
  out += "\nversion " + std::to_string(m.version);
  out += "\nsource ";
  Escape(m.source, &out);
  out += "\nentries " + std::to_string(m.entries.size()) + "\n";
  char buf[128];
  for (const auto& e : m.entries) {
    int n = std::snprintf(buf, sizeof buf, "%c %o %" PRId64 " %" PRIu64 " %016" PRIx64 " ",
                          static_cast<char>(e.type), static_cast<unsigned>(e.mode), e.mtime_ns,
                          e.size, e.hash);
    out.append(buf, static_cast<size_t>(n));
    Escape(e.path, &out);
    if (e.type == EntryType::kSymlink) {
      out.push_back(' ');
      Escape(e.target, &out);
    }
    out.push_back('\n');
  }
  std::snprintf(buf, sizeof buf, "end %016" PRIx64 "\n",
                static_cast<std::uint64_t>(XXH3_64bits(out.data(), out.size())));
  out += buf;
  return out;
}

namespace {

// The text before the trailer "end <hash>\n", once that hash matches it.
Result<std::string_view> CheckedBody(std::string_view text) {
  if (text.size() < 22 || text.back() != '\n') return Corrupt("truncated");
  size_t end_pos = text.rfind("\nend ", text.size() - 2);
  if (end_pos == std::string_view::npos) return Corrupt("no trailer");
  std::string_view body = text.substr(0, end_pos + 1);
  std::string_view trailer = text.substr(end_pos + 5, text.size() - end_pos - 6);
  std::uint64_t want = 0;
  if (!ParseNum(trailer, &want, 16)) return Corrupt("bad trailer");
  if (XXH3_64bits(body.data(), body.size()) != want) return Corrupt("checksum mismatch");
  return body;
}

}  // namespace

Result<std::uint64_t> ParseManifestVersion(std::string_view text) {
  DESPOOL_ASSIGN_OR_RETURN(std::string_view body, CheckedBody(text));
  // The first three lines: magic, package, version.
  std::string_view lines[3];
  for (auto& line : lines) {
    size_t nl = body.find('\n');
    if (nl == std::string_view::npos) return Corrupt("bad header");
    line = body.substr(0, nl);
    body.remove_prefix(nl + 1);
  }
  std::uint64_t version = 0;
  const auto version_text = HeaderValue(lines[2], "version");
  if (lines[0] != kMagic || !HeaderValue(lines[1], "package") || !version_text ||
      !ParseNum(*version_text, &version)) {
    return Corrupt("bad header");
  }
  return version;
}

Result<Manifest> ParseManifest(std::string_view text) {
  // Trailer first: "end <hash>\n" over everything before it.
  DESPOOL_ASSIGN_OR_RETURN(std::string_view body, CheckedBody(text));

  Manifest m;
  const std::vector<std::string_view> lines = internal::SplitLines(body);
  if (lines.size() < 5 || lines[0] != kMagic) return Corrupt("bad header");
  const auto package = HeaderValue(lines[1], "package");
  const auto version = HeaderValue(lines[2], "version");
  const auto source = HeaderValue(lines[3], "source");
  const auto entries = HeaderValue(lines[4], "entries");
  if (!package || !Unescape(*package, &m.package) || m.package.empty()) return Corrupt("package");
  if (!version || !ParseNum(*version, &m.version)) return Corrupt("version");
  if (!source || !Unescape(*source, &m.source)) return Corrupt("source");
  std::uint64_t count = 0;
  if (!entries || !ParseNum(*entries, &count) || count != lines.size() - 5) {
    return Corrupt("entry count");
  }
  m.entries.reserve(count);
  for (size_t i = 5; i < lines.size(); ++i) {
    auto parts = SplitSpaces(lines[i]);
    if (parts.size() < 6 || parts[0].size() != 1) return Corrupt("line " + std::to_string(i + 1));
    ManifestEntry e;
    char t = parts[0][0];
    if (t != 'd' && t != 'f' && t != 'l') return Corrupt("type on line " + std::to_string(i + 1));
    e.type = static_cast<EntryType>(t);
    unsigned mode = 0;
    if (!ParseNum(parts[1], &mode, 8) || !ParseNum(parts[2], &e.mtime_ns) ||
        !ParseNum(parts[3], &e.size) || !ParseNum(parts[4], &e.hash, 16) ||
        !Unescape(parts[5], &e.path) || e.path.empty()) {
      return Corrupt("fields on line " + std::to_string(i + 1));
    }
    e.mode = static_cast<mode_t>(mode);
    if (e.type == EntryType::kSymlink) {
      if (parts.size() != 7 || !Unescape(parts[6], &e.target) || e.target.empty()) {
        return Corrupt("symlink on line " + std::to_string(i + 1));
      }
    } else if (parts.size() != 6) {
      return Corrupt("extra fields on line " + std::to_string(i + 1));
    }
    if (!m.entries.empty() && !(m.entries.back().path < e.path)) {
      return Corrupt("unsorted on line " + std::to_string(i + 1));
    }
    m.entries.push_back(std::move(e));
  }
  return m;
}

}  // namespace despool::workers
