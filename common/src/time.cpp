#include "despool/common/time.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace despool {
namespace {

using std::chrono::days;
using std::chrono::milliseconds;
using std::chrono::sys_days;

// 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z.
constexpr std::int64_t kMinMs = -62167219200000;
constexpr std::int64_t kMaxMs = 253402300799999;

Error Invalid(std::string_view text, std::string_view why) {
  return MakeError(
      ErrorCode::kInvalidArgument,
      "invalid RFC 3339 timestamp '" + std::string(text.substr(0, 64)) + "': " + std::string(why));
}

// Reads exactly n digits at pos; false if any is not a digit.
bool Digits(std::string_view s, std::size_t pos, std::size_t n, int& out) {
  if (pos + n > s.size()) return false;
  int v = 0;
  for (std::size_t i = pos; i < pos + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  out = v;
  return true;
}

}  // namespace

std::int64_t NowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string FormatRfc3339Ms(std::int64_t ms_since_epoch) {
  const std::int64_t ms = std::clamp(ms_since_epoch, kMinMs, kMaxMs);
  const milliseconds since{ms};
  const sys_days day = std::chrono::floor<days>(std::chrono::sys_time<milliseconds>(since));
  const std::chrono::year_month_day ymd{day};
  std::int64_t in_day =
      ms - std::chrono::duration_cast<milliseconds>(day.time_since_epoch()).count();
  const int millis = static_cast<int>(in_day % 1000);
  in_day /= 1000;
  const int sec = static_cast<int>(in_day % 60);
  const int min = static_cast<int>((in_day / 60) % 60);
  const int hour = static_cast<int>(in_day / 3600);
  char buf[64];  // room for any int the compiler cannot bound (-Wformat-truncation)
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ",
                static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                static_cast<unsigned>(ymd.day()), hour, min, sec, millis);
  return buf;
}

Result<std::int64_t> ParseRfc3339Ms(std::string_view text) {
  int year = 0, month = 0, day = 0, hour = 0, minute = 0, second = 0;
  if (text.size() < 20 || !Digits(text, 0, 4, year) || text[4] != '-' ||
      !Digits(text, 5, 2, month) || text[7] != '-' || !Digits(text, 8, 2, day) ||
      (text[10] != 'T' && text[10] != 't' && text[10] != ' ') || !Digits(text, 11, 2, hour) ||
      text[13] != ':' || !Digits(text, 14, 2, minute) || text[16] != ':' ||
      !Digits(text, 17, 2, second)) {
    return Invalid(text, "expected YYYY-MM-DDTHH:MM:SS[.fff]Z");
  }
  const std::chrono::year_month_day ymd{std::chrono::year{year},
                                        std::chrono::month{static_cast<unsigned>(month)},
                                        std::chrono::day{static_cast<unsigned>(day)}};
  if (!ymd.ok()) return Invalid(text, "no such date");
  if (hour > 23 || minute > 59 || second > 59) return Invalid(text, "time out of range");

  std::size_t pos = 19;
  int millis = 0;
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    const std::size_t start = pos;
    int scale = 100;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      millis += (text[pos] - '0') * scale;  // digits past the third add 0 (scale hits 0)
      scale /= 10;
      ++pos;
    }
    if (pos == start) return Invalid(text, "empty fraction");
  }
  if (pos >= text.size()) return Invalid(text, "missing time zone ('Z' or +HH:MM)");
  int offset_minutes = 0;
  if (text[pos] == 'Z' || text[pos] == 'z') {
    ++pos;
  } else if (text[pos] == '+' || text[pos] == '-') {
    int oh = 0, om = 0;
    if (!Digits(text, pos + 1, 2, oh) || pos + 3 >= text.size() || text[pos + 3] != ':' ||
        !Digits(text, pos + 4, 2, om) || oh > 23 || om > 59) {
      return Invalid(text, "bad time zone offset");
    }
    offset_minutes = (oh * 60 + om) * (text[pos] == '-' ? -1 : 1);
    pos += 6;
  } else {
    return Invalid(text, "bad time zone");
  }
  if (pos != text.size()) return Invalid(text, "trailing characters");

  const std::int64_t day_ms =
      std::chrono::duration_cast<milliseconds>(sys_days(ymd).time_since_epoch()).count();
  return day_ms + ((hour * 60 + minute) * 60 + second) * std::int64_t{1000} + millis -
         offset_minutes * std::int64_t{60000};
}

}  // namespace despool
