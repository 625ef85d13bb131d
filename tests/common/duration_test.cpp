#include "despool/common/duration.h"

#include <gtest/gtest.h>

namespace despool {
namespace {

using std::chrono::milliseconds;

TEST(DurationTest, ParsesContractForms) {
  EXPECT_EQ(*ParseDuration("250ms"), milliseconds(250));
  EXPECT_EQ(*ParseDuration("30s"), milliseconds(30000));
  EXPECT_EQ(*ParseDuration("5m"), milliseconds(300000));
  EXPECT_EQ(*ParseDuration("2h"), milliseconds(7200000));
  EXPECT_EQ(*ParseDuration("10"), milliseconds(10000));  // plain number = seconds
  EXPECT_EQ(*ParseDuration("0"), milliseconds(0));
  EXPECT_EQ(*ParseDuration("1.5s"), milliseconds(1500));
  EXPECT_EQ(*ParseDuration("1.5"), milliseconds(1500));
  EXPECT_EQ(*ParseDuration("0.25m"), milliseconds(15000));
  EXPECT_EQ(*ParseDuration("1h30m"), milliseconds(5400000));
  EXPECT_EQ(*ParseDuration("1s500ms"), milliseconds(1500));
  EXPECT_EQ(*ParseDuration("007s"), milliseconds(7000));
}

TEST(DurationTest, RejectsGarbage) {
  for (const char* bad :
       {"",      "-5s",  "-1",   "+5s", "s",     "5x",      "5 s", " 5s", "5s ",  "1.s",  ".5s",
        "1..5s", "5sec", "1h30", "abc", "0.5ms", "1.0001s", "5S",  "1e3", "0x10", "30s\n"}) {
    auto r = ParseDuration(bad);
    EXPECT_FALSE(r.ok()) << "accepted '" << bad << "'";
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    }
  }
  auto neg = ParseDuration("-5s");
  ASSERT_FALSE(neg.ok());
  EXPECT_NE(neg.error().message.find("negative"), std::string::npos) << neg.error().message;
  EXPECT_NE(neg.error().message.find("'-5s'"), std::string::npos) << neg.error().message;
}

TEST(DurationTest, RejectsOverflow) {
  EXPECT_FALSE(ParseDuration("99999999999999999999999999s").ok());
  EXPECT_FALSE(ParseDuration("18446744073709551616ms").ok());
  EXPECT_FALSE(ParseDuration("9223372036854775807ms").ok());
  EXPECT_FALSE(ParseDuration("5124095576030431h").ok());  // would wrap int64 milliseconds
  const auto max_text = std::to_string(kMaxDuration.count()) + "ms";
  EXPECT_EQ(*ParseDuration(max_text), kMaxDuration);
  EXPECT_FALSE(ParseDuration(std::to_string(kMaxDuration.count() + 1) + "ms").ok());
  EXPECT_FALSE(ParseDuration(max_text + "1ms").ok());  // sum over the limit
}

TEST(DurationTest, Formats) {
  EXPECT_EQ(FormatDuration(milliseconds(0)), "0s");
  EXPECT_EQ(FormatDuration(milliseconds(250)), "250ms");
  EXPECT_EQ(FormatDuration(milliseconds(42000)), "42s");
  EXPECT_EQ(FormatDuration(milliseconds(300000)), "5m");
  EXPECT_EQ(FormatDuration(milliseconds(5400000)), "1h30m");
  EXPECT_EQ(FormatDuration(milliseconds(1500)), "1s500ms");
  EXPECT_EQ(FormatDuration(milliseconds(-30000)), "-30s");
  EXPECT_EQ(FormatDuration(milliseconds(INT64_MIN)).front(), '-');
}

TEST(DurationTest, FormatParsesBack) {
  for (std::int64_t ms : {0LL, 1LL, 999LL, 1000LL, 61001LL, 3600000LL, 3723004LL, 86400000LL,
                          static_cast<long long>(kMaxDuration.count())}) {
    const auto text = FormatDuration(milliseconds(ms));
    auto back = ParseDuration(text);
    ASSERT_TRUE(back.ok()) << text << ": " << back.error().message;
    EXPECT_EQ(back->count(), ms) << text;
  }
}

TEST(DurationTest, Relative) {
  const std::int64_t now = 1'800'000'000'000;
  EXPECT_EQ(FormatRelative(now, now + 42'000), "in 42s");
  EXPECT_EQ(FormatRelative(now, now - 180'000), "3m ago");
  EXPECT_EQ(FormatRelative(now, now + 192'500), "in 3m12s");
  EXPECT_EQ(FormatRelative(now, now - 5'412'345), "1h30m ago");
  EXPECT_EQ(FormatRelative(now, now + 400), "now");
  EXPECT_EQ(FormatRelative(now, now), "now");
  EXPECT_EQ(FormatRelative(INT64_MIN, INT64_MAX).substr(0, 3), "in ");
}

}  // namespace
}  // namespace despool
