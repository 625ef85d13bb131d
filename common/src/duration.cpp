#include "despool/common/duration.h"

#include <cstdlib>

namespace despool {
namespace {

using std::chrono::milliseconds;

Error Invalid(std::string_view text, std::string_view why) {
  return MakeError(ErrorCode::kInvalidArgument,
                   "invalid duration '" + std::string(text.substr(0, 64)) +
                       "': " + std::string(why) + " (expected e.g. 250ms, 30s, 5m, 2h)");
}

bool IsDigit(char c) {
  return c >= '0' && c <= '9';
}

constexpr std::uint64_t kMaxMs = static_cast<std::uint64_t>(kMaxDuration.count());

}  // namespace

Result<milliseconds> ParseDuration(std::string_view text) {
  if (text.empty()) return Invalid(text, "empty");
  if (text.front() == '-') return Invalid(text, "must not be negative");
  std::uint64_t total = 0;
  std::size_t pos = 0;
  bool first = true;
  while (pos < text.size()) {
    // number = digits ["." digits]; values beyond kMaxMs are rejected as we go, so the
    // integer part never needs more than 19 digits of headroom.
    std::uint64_t whole = 0;
    const std::size_t start = pos;
    while (pos < text.size() && IsDigit(text[pos])) {
      whole = whole * 10 + static_cast<std::uint64_t>(text[pos] - '0');
      if (whole > kMaxMs) return Invalid(text, "too large");
      ++pos;
    }
    if (pos == start) return Invalid(text, "expected a number");
    std::uint64_t frac = 0;
    std::uint64_t frac_scale = 1;
    if (pos < text.size() && text[pos] == '.') {
      ++pos;
      const std::size_t frac_start = pos;
      while (pos < text.size() && IsDigit(text[pos])) {
        if (frac_scale >= 1000000000) return Invalid(text, "too many fractional digits");
        frac = frac * 10 + static_cast<std::uint64_t>(text[pos] - '0');
        frac_scale *= 10;
        ++pos;
      }
      if (pos == frac_start) return Invalid(text, "expected digits after '.'");
    }
    const std::size_t unit_start = pos;
    while (pos < text.size() && !IsDigit(text[pos]) && text[pos] != '.') ++pos;
    const std::string_view unit = text.substr(unit_start, pos - unit_start);
    std::uint64_t unit_ms = 0;
    if (unit == "ms") {
      unit_ms = 1;
    } else if (unit == "s") {
      unit_ms = 1000;
    } else if (unit == "m") {
      unit_ms = 60 * 1000;
    } else if (unit == "h") {
      unit_ms = 3600 * 1000;
    } else if (unit.empty()) {
      // A bare number means seconds, but only as the whole text ("30"), not "1h30".
      if (!first || pos != text.size()) return Invalid(text, "missing unit");
      unit_ms = 1000;
    } else {
      return Invalid(text, "unknown unit '" + std::string(unit.substr(0, 16)) + "'");
    }
    // whole <= kMaxMs (< 2^42) and unit_ms <= 3.6e6 (< 2^22): the product fits in 64 bits.
    std::uint64_t segment = whole * unit_ms;
    // frac < 10^9 (< 2^30): frac * unit_ms fits in 64 bits.
    const std::uint64_t frac_ms_scaled = frac * unit_ms;
    if (frac_ms_scaled % frac_scale != 0) return Invalid(text, "finer than a millisecond");
    segment += frac_ms_scaled / frac_scale;
    if (segment > kMaxMs || total + segment > kMaxMs) return Invalid(text, "too large");
    total += segment;
    first = false;
  }
  return milliseconds(static_cast<std::int64_t>(total));
}

std::string FormatDuration(milliseconds d) {
  std::int64_t ms = d.count();
  if (ms == 0) return "0s";
  std::string out;
  // Work in unsigned so that the most negative value has a magnitude too.
  std::uint64_t rest = static_cast<std::uint64_t>(ms);
  if (ms < 0) {
    out = "-";
    rest = 0 - rest;
  }
  const std::uint64_t h = rest / 3600000;
  rest %= 3600000;
  const std::uint64_t m = rest / 60000;
  rest %= 60000;
  const std::uint64_t s = rest / 1000;
  rest %= 1000;
  if (h) out += std::to_string(h) + "h";
  if (m) out += std::to_string(m) + "m";
  if (s) out += std::to_string(s) + "s";
  if (rest) out += std::to_string(rest) + "ms";
  return out;
}

std::string FormatRelative(std::int64_t now_ms, std::int64_t t_ms) {
  const bool future = t_ms > now_ms;
  // |t - now| in unsigned arithmetic: cannot overflow for any pair of int64 values.
  const std::uint64_t diff =
      future ? static_cast<std::uint64_t>(t_ms) - static_cast<std::uint64_t>(now_ms)
             : static_cast<std::uint64_t>(now_ms) - static_cast<std::uint64_t>(t_ms);
  if (diff < 1000) return "now";
  std::uint64_t truncated = diff - diff % 1000;          // whole seconds
  if (diff >= 3600000) truncated = diff - diff % 60000;  // whole minutes
  const std::string text = FormatDuration(milliseconds(static_cast<std::int64_t>(
      truncated > static_cast<std::uint64_t>(INT64_MAX) ? INT64_MAX - INT64_MAX % 60000
                                                        : truncated)));
  return future ? "in " + text : text + " ago";
}

}  // namespace despool
