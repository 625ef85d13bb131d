// Wall-clock time as integer milliseconds since the Unix epoch, and its RFC 3339 text form.
//
// The contract prints timestamps as RFC 3339, UTC, milliseconds, "Z" (e.g. next_attempt_at,
// log lines). Integers keep them exact through msgpack, SQLite and JSON.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "despool/common/result.h"

namespace despool {

// System clock (wall time), milliseconds since 1970-01-01T00:00:00Z. Not monotonic: use
// std::chrono::steady_clock for timeouts and intervals.
std::int64_t NowMs();

// "2026-11-25T21:22:33.123Z". Always UTC, always exactly three fractional digits.
// Valid for years 0000..9999; values outside that range are clamped to it.
std::string FormatRfc3339Ms(std::int64_t ms_since_epoch);

// Parses RFC 3339 ("YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)"; 't'/'z'/' ' accepted
// for T/Z per RFC 3339 §5.6 note) into milliseconds since the epoch. Fractions beyond
// milliseconds are truncated. Leap second 60 is rejected. Errors: kInvalidArgument naming
// the input.
Result<std::int64_t> ParseRfc3339Ms(std::string_view text);

}  // namespace despool
