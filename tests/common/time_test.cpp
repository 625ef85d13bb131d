#include "despool/common/time.h"

#include <gtest/gtest.h>

namespace despool {
namespace {

TEST(TimeTest, FormatsKnownInstants) {
  EXPECT_EQ(FormatRfc3339Ms(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(FormatRfc3339Ms(1'795'641'753'123), "2026-11-25T21:22:33.123Z");
  EXPECT_EQ(FormatRfc3339Ms(951'782'400'000), "2000-02-29T00:00:00.000Z");
  EXPECT_EQ(FormatRfc3339Ms(-1), "1969-12-31T23:59:59.999Z");
}

TEST(TimeTest, ClampsOutOfRangeInstants) {
  EXPECT_EQ(FormatRfc3339Ms(INT64_MIN), "0000-01-01T00:00:00.000Z");
  EXPECT_EQ(FormatRfc3339Ms(INT64_MAX), "9999-12-31T23:59:59.999Z");
}

TEST(TimeTest, RoundTrip) {
  for (std::int64_t ms :
       {std::int64_t{0}, std::int64_t{1}, std::int64_t{-1}, std::int64_t{1'795'641'753'123},
        std::int64_t{951'868'799'999}, std::int64_t{253'402'300'799'999}, NowMs()}) {
    const auto text = FormatRfc3339Ms(ms);
    auto back = ParseRfc3339Ms(text);
    ASSERT_TRUE(back.ok()) << text << ": " << back.error().message;
    EXPECT_EQ(*back, ms) << text;
  }
}

TEST(TimeTest, ParsesOffsetsAndFractions) {
  EXPECT_EQ(*ParseRfc3339Ms("2026-11-25T22:22:33.123+01:00"), 1'795'641'753'123);
  EXPECT_EQ(*ParseRfc3339Ms("2026-11-25T21:22:33Z"), 1'795'641'753'000);
  EXPECT_EQ(*ParseRfc3339Ms("2026-11-25T21:22:33.1Z"), 1'795'641'753'100);
  EXPECT_EQ(*ParseRfc3339Ms("2026-11-25T21:22:33.123999Z"), 1'795'641'753'123);
  EXPECT_EQ(*ParseRfc3339Ms("2026-11-25t21:22:33.123z"), 1'795'641'753'123);
  EXPECT_EQ(*ParseRfc3339Ms("2026-11-25T20:52:33.123-00:30"), 1'795'641'753'123);
}

TEST(TimeTest, RejectsBadInput) {
  for (const char* bad :
       {"", "2026-11-25", "2026-11-25T21:22:33", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
        "2026-11-25T24:00:00Z", "2026-11-25T21:60:00Z", "2026-11-25T21:22:60Z",
        "2026-11-25T21:22:33.Z", "2026-11-25T21:22:33.123ZZ", "2026-11-25T21:22:33+0100",
        "26-11-25T21:22:33Z", "2026/11/25T21:22:33Z", "2026-11-25T21:22:33.12a3Z"}) {
    auto r = ParseRfc3339Ms(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
    }
  }
}

TEST(TimeTest, NowIsWallClock) {
  // 2020-01-01 < now < 2100-01-01: catches a steady_clock or a seconds/ms mix-up.
  EXPECT_GT(NowMs(), 1'577'836'800'000);
  EXPECT_LT(NowMs(), 4'102'444'800'000);
}

}  // namespace
}  // namespace despool
