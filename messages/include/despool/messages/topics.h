// Topics of the events PUB socket.
//
// An event is published as two frames: [topic][envelope], where envelope is Encode() of an
// Envelope whose body is an Event (request id 0). The topic is
//
//     "dp/<dp>/pkg/<package>/"
//
// Every part ends with '/', because ZeroMQ SUB filtering is a byte-prefix match: subscribing to
// DpPrefix("a") = "dp/a/" receives DP "a" but not DP "ab". Subscribe to "dp/" (kTopicRoot) for
// everything, DpPrefix(dp) for one DP, TopicFor(dp, package) for one package on one DP. A
// package filter across all DPs cannot be a prefix: subscribe to kTopicRoot and filter on the
// decoded event (or on ParseTopic). Verify jobs over every package have an empty package part
// ("dp/a/pkg//"). DP names and package ids cannot contain '/' (common/names.h).
#pragma once

#include <string>
#include <string_view>

namespace despool::msg {

inline constexpr std::string_view kTopicRoot = "dp/";

std::string TopicFor(std::string_view dp, std::string_view package);
std::string DpPrefix(std::string_view dp);

// Splits a topic built by TopicFor; false when it does not have that shape.
bool ParseTopic(std::string_view topic, std::string* dp, std::string* package);

}  // namespace despool::msg
