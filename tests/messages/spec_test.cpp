// messages/PROTOCOL.md and the code agree: the spec's message table lists exactly the Body
// alternatives (derived from the std::variant, not a hand-written list), each with its C++
// type, every listed type has a round-trip test (testing::AllSamples), and every key the
// encoder writes is documented.
#include <cxxabi.h>
#include <gtest/gtest.h>
#include <msgpack.hpp>

#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <typeinfo>

#include "despool/messages/codec.h"
#include "despool/messages/topics.h"
#include "messages/samples.h"

namespace despool::msg {
namespace {

// The source tree: $DESPOOL_SOURCE_DIR (ctest sets it), else derived from this file's path
// (CMake compiles with absolute paths), so the test also runs straight from the binary.
std::string SourceDir() {
  if (const char* dir = std::getenv("DESPOOL_SOURCE_DIR"); dir != nullptr && *dir != '\0') return dir;
  const std::string here = __FILE__;
  const std::string suffix = "/tests/messages/spec_test.cpp";
  if (here.size() > suffix.size() && here.ends_with(suffix)) {
    return here.substr(0, here.size() - suffix.size());
  }
  return ".";
}

std::string ReadProtocol() {
  const std::string path = SourceDir() + "/messages/PROTOCOL.md";
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path << " (set DESPOOL_SOURCE_DIR)";
    return {};
  }
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// Rows of the "## Message table" section: wire type name -> C++ body name.
std::map<std::string, std::string> MessageTable(const std::string& doc) {
  std::map<std::string, std::string> table;
  const std::size_t start = doc.find("\n## Message table");
  EXPECT_NE(start, std::string::npos) << "PROTOCOL.md has no '## Message table' section";
  if (start == std::string::npos) return table;
  std::size_t end = doc.find("\n## ", start + 1);
  if (end == std::string::npos) end = doc.size();
  std::istringstream section(doc.substr(start, end - start));
  const std::regex row(R"(^\|\s*`([^`]+)`\s*\|\s*`?([A-Za-z0-9_]*)`?\s*\|.*)");
  std::string line;
  std::smatch m;
  while (std::getline(section, line)) {
    if (!std::regex_match(line, m, row)) continue;
    EXPECT_TRUE(table.emplace(m[1], m[2]).second) << "'" << m[1] << "' listed twice";
  }
  return table;
}

template <typename T>
std::string UnqualifiedName() {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(typeid(T).name(), nullptr, nullptr, &status), std::free);
  std::string name = status == 0 ? demangled.get() : typeid(T).name();
  return name.substr(name.rfind(':') + 1);
}

// Every Body alternative: wire name -> C++ type name, straight from the variant.
template <std::size_t... I>
std::map<std::string, std::string> BodyAlternatives(std::index_sequence<I...>) {
  std::map<std::string, std::string> out;
  (out.emplace(TypeName(Body(std::in_place_index<I>)),
               UnqualifiedName<std::variant_alternative_t<I, Body>>()),
   ...);
  return out;
}

TEST(Spec, EveryBodyTypeIsInTheMessageTable) {
  const auto table = MessageTable(ReadProtocol());
  const auto alternatives = BodyAlternatives(std::make_index_sequence<std::variant_size_v<Body>>());
  ASSERT_EQ(alternatives.size(), std::variant_size_v<Body>) << "two alternatives share a wire name";
  for (const auto& [wire, cpp] : alternatives) {
    auto it = table.find(wire);
    if (it == table.end()) {
      ADD_FAILURE() << "C++ message " << cpp << " ('" << wire << "') is missing from PROTOCOL.md";
      continue;
    }
    EXPECT_EQ(it->second, cpp) << "PROTOCOL.md maps '" << wire << "' to the wrong C++ type";
  }
}

TEST(Spec, EveryTableEntryHasARoundTripTest) {
  const auto table = MessageTable(ReadProtocol());
  ASSERT_FALSE(table.empty());
  std::set<std::string> tested;
  for (const Envelope& e : testing::AllSamples()) tested.insert(TypeName(e.body));
  for (const auto& [wire, cpp] : table) {
    EXPECT_TRUE(tested.count(wire)) << "PROTOCOL.md lists '" << wire
                                    << "' but no round-trip test covers it";
  }
}

void CollectKeys(const msgpack::object& o, std::set<std::string>* keys) {
  if (o.type == msgpack::type::ARRAY) {
    for (std::uint32_t i = 0; i < o.via.array.size; ++i) CollectKeys(o.via.array.ptr[i], keys);
  } else if (o.type == msgpack::type::MAP) {
    for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
      keys->insert(o.via.map.ptr[i].key.as<std::string>());
      CollectKeys(o.via.map.ptr[i].val, keys);
    }
  }
}

TEST(Spec, EveryEncodedKeyIsDocumented) {
  const std::string doc = ReadProtocol();
  ASSERT_FALSE(doc.empty());
  for (const Envelope& e : testing::AllSamples()) {
    const std::string frame = Encode(e);
    msgpack::object_handle handle = msgpack::unpack(frame.data(), frame.size());
    std::set<std::string> keys;
    CollectKeys(handle.get(), &keys);
    for (const std::string& key : keys) {
      EXPECT_NE(doc.find("`" + key + "`"), std::string::npos)
          << "key '" << key << "' of '" << TypeName(e.body) << "' is not in PROTOCOL.md";
    }
  }
}

TEST(Spec, EveryEnumValueIsDocumented) {
  const std::string doc = ReadProtocol();
  auto expect_documented = [&](const char* name) {
    EXPECT_NE(doc.find(std::string("`") + name + "`"), std::string::npos) << name;
  };
  for (int i = 0; i <= static_cast<int>(JobState::kDead); ++i) expect_documented(ToString(JobState(i)));
  for (int i = 0; i <= static_cast<int>(Outcome::kVerified); ++i) expect_documented(ToString(Outcome(i)));
  for (int i = 0; i <= static_cast<int>(ErrorKind::kInternal); ++i) expect_documented(ToString(ErrorKind(i)));
  for (JobKind k : {JobKind::kRefresh, JobKind::kVerify}) expect_documented(ToString(k));
  for (OnExhausted p : {OnExhausted::kDead, OnExhausted::kForce}) expect_documented(ToString(p));
  for (EventKind k : {EventKind::kState, EventKind::kProgress}) expect_documented(ToString(k));
}

TEST(Spec, DocumentedTopicMatchesTheHelpers) {
  const std::string doc = ReadProtocol();
  EXPECT_NE(doc.find("`dp/<dp>/pkg/<package>/`"), std::string::npos);
  EXPECT_EQ(TopicFor("<dp>", "<package>"), "dp/<dp>/pkg/<package>/");
}

}  // namespace
}  // namespace despool::msg
