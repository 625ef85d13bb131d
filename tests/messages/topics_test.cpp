#include "despool/messages/topics.h"

#include <gtest/gtest.h>

#include <string>

namespace despool::msg {
namespace {

TEST(Topics, TopicForAndDpPrefix) {
  EXPECT_EQ(TopicFor("dp1", "pkg.a"), "dp/dp1/pkg/pkg.a/");
  EXPECT_EQ(DpPrefix("dp1"), "dp/dp1/");
  EXPECT_TRUE(TopicFor("dp1", "x").starts_with(DpPrefix("dp1")));
  EXPECT_TRUE(TopicFor("dp1", "x").starts_with(kTopicRoot));
  EXPECT_EQ(TopicFor("a", ""), "dp/a/pkg//");
}

// ZeroMQ SUB filtering is a byte-prefix match: a prefix must not match a longer name.
TEST(Topics, PrefixOfOneDpDoesNotMatchALongerDp) {
  EXPECT_FALSE(TopicFor("ab", "pkg").starts_with(DpPrefix("a")));
  EXPECT_FALSE(TopicFor("a", "pkg2").starts_with(TopicFor("a", "pkg")));
}

TEST(Topics, ParseTopicInvertsTopicFor) {
  std::string dp, package;
  ASSERT_TRUE(ParseTopic(TopicFor("dp-1", "pkg_2"), &dp, &package));
  EXPECT_EQ(dp, "dp-1");
  EXPECT_EQ(package, "pkg_2");
  ASSERT_TRUE(ParseTopic(TopicFor("dp", ""), &dp, &package));
  EXPECT_EQ(package, "");
  for (const char* bad : {"", "dp/", "dp//pkg/x/", "dp/a/pkg/x", "dp/a/pk/x/", "xx/a/pkg/x/",
                          "dp/a/pkg/x/y/", "dp/a/"}) {
    EXPECT_FALSE(ParseTopic(bad, &dp, &package)) << bad;
  }
}

}  // namespace
}  // namespace despool::msg
