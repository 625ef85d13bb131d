#include "despool/common/logging.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "despool/common/time.h"

namespace despool {
namespace {

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

class LoggingTest : public ::testing::Test {
 protected:
  void Log(spdlog::level::level_enum level, LogFormat format) {
    LogOptions options;
    options.level = level;
    options.format = format;
    options.stream = &out_;
    ASSERT_TRUE(SetupLogging(options).ok());
  }
  // Loggers must not keep pointing at out_ after the test.
  void TearDown() override { ASSERT_TRUE(SetupLogging(LogOptions{}).ok()); }

  std::vector<nlohmann::json> JsonLines() {
    std::vector<nlohmann::json> parsed;
    for (const auto& line : Lines(out_.str())) {
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      EXPECT_FALSE(j.is_discarded()) << "not one JSON object: " << line;
      EXPECT_TRUE(j.is_object()) << line;
      parsed.push_back(std::move(j));
    }
    return parsed;
  }

  std::ostringstream out_;
};

TEST_F(LoggingTest, JsonLinesSurviveHostileMessages) {
  Log(spdlog::level::trace, LogFormat::kJson);
  const std::vector<std::string> messages = {
      "plain",
      "say \"hi\" and \\ back\\slash",
      "line one\nline two\r\nline three",
      "tab\there",
      std::string("ctl \x01\x07\x1b[31m\x1f end"),
      std::string("nul \0 inside", 12),
      "non-ASCII: Größe ✓ 日本",
      "{\"json\": \"inside\"}",
      "",
  };
  auto logger = GetLogger("engine");
  for (const auto& m : messages) logger->info("{}", m);

  const auto lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), messages.size()) << out_.str();
  const auto parsed = JsonLines();
  ASSERT_EQ(parsed.size(), messages.size());
  for (std::size_t i = 0; i < messages.size(); ++i) {
    EXPECT_EQ(parsed[i].at("msg").get<std::string>(), messages[i]);
    EXPECT_EQ(parsed[i].at("level"), "info");
    EXPECT_EQ(parsed[i].at("logger"), "engine");
    const auto ts = ParseRfc3339Ms(parsed[i].at("ts").get<std::string>());
    ASSERT_TRUE(ts.ok()) << parsed[i].at("ts");
    EXPECT_LT(std::abs(*ts - NowMs()), 60000);
    EXPECT_EQ(parsed[i].at("ts").get<std::string>().back(), 'Z');
  }
}

TEST_F(LoggingTest, JsonInvalidUtf8IsReplacedNotThrown) {
  Log(spdlog::level::info, LogFormat::kJson);
  GetLogger("store")->warn("{}", std::string("bad \xff\xfe bytes"));
  const auto parsed = JsonLines();
  ASSERT_EQ(parsed.size(), 1u);
  EXPECT_EQ(parsed[0].at("level"), "warn");
  EXPECT_NE(parsed[0].at("msg").get<std::string>().find("bytes"), std::string::npos);
}

TEST_F(LoggingTest, JsonSplitsKeyValueFields) {
  Log(spdlog::level::info, LogFormat::kJson);
  GetLogger("broker")->info("job applied job={} dp={} path={}", "j-1", "lab1",
                            LogQuote("dir with \"q\" and space"));
  GetLogger("broker")->info("no fields here = really");
  const auto parsed = JsonLines();
  ASSERT_EQ(parsed.size(), 2u);
  const auto& fields = parsed[0].at("fields");
  EXPECT_EQ(fields.at("job"), "j-1");
  EXPECT_EQ(fields.at("dp"), "lab1");
  EXPECT_EQ(fields.at("path"), "dir with \"q\" and space");
  EXPECT_FALSE(parsed[1].contains("fields"));
}

TEST(LogFieldsTest, QuoteRoundTrips) {
  for (const std::string& value :
       std::vector<std::string>{"simple", "a b", "q\"uote", "back\\slash", "nl\nx", "t\tx",
                                std::string("c\x01x"), "k=v", ""}) {
    const auto fields = ParseLogFields("x=" + LogQuote(value) + " y=1");
    ASSERT_EQ(fields.count("x"), 1u) << value;
    EXPECT_EQ(fields.at("x"), value);
    EXPECT_EQ(fields.at("y"), "1");
  }
  EXPECT_EQ(LogQuote("plain"), "plain");
  EXPECT_EQ(LogQuote("a b"), "\"a b\"");
  EXPECT_TRUE(ParseLogFields("x=\"unterminated y").empty());
  EXPECT_TRUE(ParseLogFields("=v 1a=b").empty());
}

TEST_F(LoggingTest, TextFormat) {
  Log(spdlog::level::info, LogFormat::kText);
  GetLogger("worker")->warn("disk low dp={}", "lab1");
  const auto lines = Lines(out_.str());
  ASSERT_EQ(lines.size(), 1u);
  // 2026-11-25T21:22:33.123Z warn worker: disk low dp=lab1
  const auto& line = lines[0];
  ASSERT_GT(line.size(), 25u);
  EXPECT_TRUE(ParseRfc3339Ms(line.substr(0, 24)).ok()) << line;
  EXPECT_EQ(line.substr(24), " warn worker: disk low dp=lab1");
}

TEST_F(LoggingTest, LevelFiltering) {
  Log(spdlog::level::warn, LogFormat::kJson);
  auto logger = GetLogger("ctl");
  logger->trace("t");
  logger->debug("d");
  logger->info("i");
  logger->warn("w");
  logger->error("e");
  const auto parsed = JsonLines();
  ASSERT_EQ(parsed.size(), 2u) << out_.str();
  EXPECT_EQ(parsed[0].at("level"), "warn");
  EXPECT_EQ(parsed[1].at("level"), "error");
}

TEST_F(LoggingTest, ReSetupRepointsExistingLoggers) {
  auto early = GetLogger("early-component");  // taken before set-up, as a cached member would be
  Log(spdlog::level::debug, LogFormat::kJson);
  early->debug("after setup");
  spdlog::info("through the default logger");
  const auto parsed = JsonLines();
  ASSERT_EQ(parsed.size(), 2u) << out_.str();
  EXPECT_EQ(parsed[0].at("logger"), "early-component");
  EXPECT_EQ(parsed[1].at("logger"), "despool");
  EXPECT_EQ(GetLogger("early-component"), early);
}

TEST_F(LoggingTest, ConcurrentLoggersNeverInterleaveLines) {
  Log(spdlog::level::info, LogFormat::kJson);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      // Every thread asks for the same and its own logger: creation races are part of the test.
      auto shared = GetLogger("shared");
      auto own = GetLogger("thread-" + std::to_string(t));
      for (int i = 0; i < kPerThread; ++i) {
        (i % 2 ? shared : own)->info("line\nwith \"quotes\" t={} i={}", t, i);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const auto parsed = JsonLines();
  ASSERT_EQ(parsed.size(), static_cast<std::size_t>(kThreads * kPerThread));
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto& line : parsed) {
    seen.emplace(line.at("fields").at("t"), line.at("fields").at("i"));
  }
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(kThreads * kPerThread));
}

TEST_F(LoggingTest, FileSink) {
  const auto path = std::filesystem::temp_directory_path() /
                    ("despool-log-test-" + std::to_string(::getpid()) + ".log");
  std::filesystem::remove(path);
  LogOptions options;
  options.format = LogFormat::kJson;
  options.file = path.string();
  ASSERT_TRUE(SetupLogging(options).ok());
  GetLogger("broker")->error("to file \"quoted\"");
  ASSERT_TRUE(SetupLogging(LogOptions{}).ok());  // releases the file
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_EQ(nlohmann::json::parse(line).at("msg"), "to file \"quoted\"");
  std::filesystem::remove(path);
}

TEST(LoggingOptionsTest, ParseLevelsAndFormats) {
  EXPECT_EQ(*ParseLogLevel("trace"), spdlog::level::trace);
  EXPECT_EQ(*ParseLogLevel("warn"), spdlog::level::warn);
  EXPECT_EQ(*ParseLogLevel("error"), spdlog::level::err);
  EXPECT_FALSE(ParseLogLevel("warning").ok());
  EXPECT_FALSE(ParseLogLevel("INFO").ok());
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_FALSE(ParseLogFormat("xml").ok());
  LogOptions both;
  std::ostringstream s;
  both.stream = &s;
  both.file = "/tmp/x";
  EXPECT_FALSE(SetupLogging(both).ok());
  LogOptions bad_file;
  bad_file.file = "/dev/null/y.log";  // spdlog creates missing dirs; /dev/null is a file
  EXPECT_FALSE(SetupLogging(bad_file).ok());
}

}  // namespace
}  // namespace despool
