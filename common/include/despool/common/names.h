// Validation of the identifiers the contract defines (CONTRACT.md, "Words").
// Every check returns a Status whose message names the field and the offending value
// (truncated), so it can go straight into an error reply.
#pragma once

#include <cstdint>
#include <string_view>

#include "despool/common/result.h"

namespace despool {

// Versions are unsigned integers up to 2^53-1 so they survive JSON and TOML intact.
inline constexpr std::uint64_t kMaxVersion = (std::uint64_t{1} << 53) - 1;

// Package ids and DP names: [A-Za-z0-9][A-Za-z0-9._-]{0,63}, never "." or "..".
Status ValidatePackageId(std::string_view id);
Status ValidateDpName(std::string_view name);
// DP group names follow the DP name rule.
Status ValidateDpGroupName(std::string_view name);
// Job ids: [A-Za-z0-9-]{1,64}.
Status ValidateJobId(std::string_view id);
Status ValidateVersion(std::uint64_t version);
// Worker names: printable, 1..128 bytes, no control characters.
Status ValidateWorkerName(std::string_view name);
// A source directory as given by a publisher: absolute, no NUL, no ".." component, <= 4096.
Status ValidateSourcePath(std::string_view path);
// A path relative to a package directory (in-use paths, verify reports): non-empty, relative,
// no "." / ".." components, no NUL, <= 4096 bytes.
Status ValidateRelativePath(std::string_view path);

}  // namespace despool
