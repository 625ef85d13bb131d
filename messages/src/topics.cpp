#include "despool/messages/topics.h"

namespace despool::msg {

std::string TopicFor(std::string_view dp, std::string_view package) {
  std::string topic = DpPrefix(dp);
  topic += "pkg/";
  topic += package;
  topic += '/';
  return topic;
}

std::string DpPrefix(std::string_view dp) {
  std::string prefix(kTopicRoot);
  prefix += dp;
  prefix += '/';
  return prefix;
}

bool ParseTopic(std::string_view topic, std::string* dp, std::string* package) {
  if (!topic.starts_with(kTopicRoot)) return false;
  topic.remove_prefix(kTopicRoot.size());
  const std::size_t dp_end = topic.find('/');
  if (dp_end == std::string_view::npos || dp_end == 0) return false;
  std::string_view rest = topic.substr(dp_end + 1);
  constexpr std::string_view kPkg = "pkg/";
  if (!rest.starts_with(kPkg)) return false;
  rest.remove_prefix(kPkg.size());
  if (rest.empty() || rest.back() != '/' || rest.find('/') != rest.size() - 1) return false;
  *dp = std::string(topic.substr(0, dp_end));
  *package = std::string(rest.substr(0, rest.size() - 1));
  return true;
}

}  // namespace despool::msg
