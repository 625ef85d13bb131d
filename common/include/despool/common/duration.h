// Human-readable durations as the contract spells them: "250ms", "30s", "5m", "2h"; a plain
// number means seconds.
//
// Accepted grammar (no spaces, no sign):  segment+  where  segment = number unit?
//   number = digits ["." digits]    unit = "ms" | "s" | "m" | "h"
// Segments add up ("1h30m", "1m30s", "1s500ms": FormatDuration's output parses back exactly).
// A unit may be omitted only when the whole text is one number ("30", "1.5" = seconds).
// Fractions are allowed when the result is a whole number of milliseconds ("1.5s", "0.25m");
// "0.5ms" is rejected. Limit: kMaxDuration (100 years), so that adding a parsed duration to a
// steady_clock/system_clock time point (nanoseconds) cannot overflow.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "despool/common/result.h"

namespace despool {

inline constexpr std::chrono::milliseconds kMaxDuration{std::int64_t{100} * 365 * 24 * 3600 * 1000};

// kInvalidArgument for empty text, a sign ("-5s": "must not be negative"), an unknown unit,
// garbage, sub-millisecond precision or a value over kMaxDuration. The message quotes the input.
Result<std::chrono::milliseconds> ParseDuration(std::string_view text);

// Largest units first, zero parts omitted: 0 -> "0s", 250 -> "250ms", 42000 -> "42s",
// 300000 -> "5m", 5400000 -> "1h30m", 1500 -> "1s500ms". Negative values get a leading '-'.
// Non-negative output always parses back to the same value with ParseDuration.
std::string FormatDuration(std::chrono::milliseconds d);

// Coarse relative time for humans, from wall-clock milliseconds (see time.h NowMs):
// t in the future -> "in 42s", in the past -> "3m ago", |t - now| < 1s -> "now".
// Precision: seconds below 1 minute ("42s"), minutes+seconds below 1 hour ("3m12s"),
// hours+minutes above ("1h30m"); the remainder is truncated.
std::string FormatRelative(std::int64_t now_ms, std::int64_t t_ms);

}  // namespace despool
