#include "despool/common/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "despool/common/names.h"

namespace despool {
namespace {

using std::chrono::milliseconds;

ConfigReader ParseOk(std::string_view text) {
  auto reader = ConfigReader::Parse(text, "test.toml");
  EXPECT_TRUE(reader.ok()) << (reader.ok() ? "" : reader.error().message);
  return std::move(reader).value();
}

std::string FinishError(ConfigReader& reader) {
  Status status = reader.Finish();
  EXPECT_FALSE(status.ok());
  if (status.ok()) return "";
  EXPECT_EQ(status.error().code, ErrorCode::kInvalidArgument);
  return status.error().message;
}

bool Contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(ConfigTest, ReadsTypedValuesAndKeepsDefaults) {
  auto reader = ParseOk(R"(
name = "w1"
json = true
concurrency = 3
ratio = 0.5
timeout = "250ms"
plain_seconds = 30
tags = ["a", "b"]
)");
  auto root = reader.Root();
  std::string name;
  bool json = false;
  std::uint32_t concurrency = 2;
  double ratio = 0;
  milliseconds timeout{10000}, plain{0};
  std::vector<std::string> tags;
  std::string absent = "default";
  EXPECT_TRUE(root.Get("name", name));
  EXPECT_TRUE(root.Get("json", json));
  EXPECT_TRUE(root.Get("concurrency", concurrency));
  EXPECT_TRUE(root.Get("ratio", ratio));
  EXPECT_TRUE(root.Get("timeout", timeout));
  EXPECT_TRUE(root.Get("plain_seconds", plain));
  EXPECT_TRUE(root.Get("tags", tags));
  EXPECT_FALSE(root.Get("absent", absent));
  EXPECT_TRUE(reader.Finish().ok()) << reader.Finish().ToString();
  EXPECT_EQ(name, "w1");
  EXPECT_TRUE(json);
  EXPECT_EQ(concurrency, 3u);
  EXPECT_EQ(ratio, 0.5);
  EXPECT_EQ(timeout, milliseconds(250));
  EXPECT_EQ(plain, milliseconds(30000));
  EXPECT_EQ(tags, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(absent, "default");
}

TEST(ConfigTest, UnknownKeyNamesKeyAndLine) {
  auto reader = ParseOk(
      "frontend = \"tcp://127.0.0.1:7400\"\n"
      "fronted = \"typo\"\n"
      "[retry]\n"
      "base = \"30s\"\n"
      "bsae = \"1m\"\n"
      "[unknown_table]\n"
      "x = 1\n");
  auto root = reader.Root();
  std::string frontend;
  milliseconds base{};
  root.Get("frontend", frontend);
  root.Section("retry").Get("base", base);
  const auto message = FinishError(reader);
  EXPECT_TRUE(Contains(message, "test.toml:2: unknown key 'fronted'")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:5: unknown key 'retry.bsae'")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:6: unknown key 'unknown_table'")) << message;
  EXPECT_FALSE(Contains(message, "unknown_table.x")) << message;  // reported once, at the table
  EXPECT_FALSE(Contains(message, "'frontend'")) << message;
  EXPECT_EQ(base, milliseconds(30000));
}

TEST(ConfigTest, BadTypeNamesKeyAndLine) {
  auto reader = ParseOk(
      "concurrency = \"two\"\n"
      "json = 1\n"
      "[retry]\n"
      "base = \"soon\"\n"
      "max = -5\n"
      "max_attempts = -1\n"
      "tags = [\"a\", 2]\n");
  auto root = reader.Root();
  std::uint32_t concurrency = 2;
  bool json = false;
  root.Get("concurrency", concurrency);
  root.Get("json", json);
  auto retry = root.Section("retry");
  milliseconds base{30000}, max{3600000};
  std::uint32_t attempts = 10;
  std::vector<std::string> tags;
  EXPECT_FALSE(retry.Get("base", base));
  EXPECT_FALSE(retry.Get("max", max));
  EXPECT_FALSE(retry.Get("max_attempts", attempts));
  EXPECT_FALSE(retry.Get("tags", tags));
  const auto message = FinishError(reader);
  EXPECT_TRUE(Contains(message, "test.toml:1: concurrency: expected an integer, got a string"))
      << message;
  EXPECT_TRUE(Contains(message, "test.toml:2: json: expected true or false")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:4: retry.base: invalid duration 'soon'")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:5: retry.max: must not be negative")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:6: retry.max_attempts: must not be negative"))
      << message;
  EXPECT_TRUE(Contains(message, "test.toml:7: retry.tags[1]: expected a string")) << message;
  EXPECT_FALSE(Contains(message, "unknown key")) << message;  // bad, not unknown
  // Defaults untouched.
  EXPECT_EQ(concurrency, 2u);
  EXPECT_EQ(base, milliseconds(30000));
  EXPECT_EQ(attempts, 10u);
}

TEST(ConfigTest, IntegerRangeFollowsTargetType) {
  auto reader = ParseOk("small = 300\nbig = 9223372036854775807\nneg = -3\n");
  auto root = reader.Root();
  std::uint8_t small = 0;
  std::int64_t big = 0;
  std::int32_t neg = 0;
  EXPECT_FALSE(root.Get("small", small));
  EXPECT_TRUE(root.Get("big", big));
  EXPECT_TRUE(root.Get("neg", neg));
  EXPECT_EQ(big, INT64_MAX);
  EXPECT_EQ(neg, -3);
  const auto message = FinishError(reader);
  EXPECT_TRUE(Contains(message, "small: out of range [0, 255]")) << message;
}

TEST(ConfigTest, NestedTablesArraysOfTablesAndFreeFormKeys) {
  auto reader = ParseOk(R"(
[dp_groups]
labs = ["lab1", "lab2"]
"office.all" = ["office"]

[[dp]]
name = "lab1"
root = "/srv/lab1"

[[dp]]
name = "lab2"
root = "/srv/lab2"
colour = "blue"

[[dp]]
root = "/srv/nameless"
)");
  auto root = reader.Root();
  std::map<std::string, std::vector<std::string>> groups;
  auto groups_section = root.Section("dp_groups");
  const auto keys = groups_section.Keys();
  EXPECT_EQ(keys, (std::vector<std::string>{"labs", "office.all"}));
  for (const auto& key : keys) groups_section.Get(key, groups[key]);

  struct Dp {
    std::string name, root;
  };
  std::vector<Dp> dps;
  for (ConfigSection section : root.Sections("dp")) {
    Dp dp;
    section.Require("name", dp.name, [](const std::string& n) { return ValidateDpName(n); });
    section.Require("root", dp.root);
    dps.push_back(dp);
  }
  ASSERT_EQ(dps.size(), 3u);
  EXPECT_EQ(dps[1].root, "/srv/lab2");
  EXPECT_EQ(groups["labs"], (std::vector<std::string>{"lab1", "lab2"}));
  EXPECT_EQ(groups["office.all"], (std::vector<std::string>{"office"}));
  const auto message = FinishError(reader);
  EXPECT_TRUE(Contains(message, "test.toml:13: unknown key 'dp[1].colour'")) << message;
  EXPECT_TRUE(Contains(message, "dp[2].name: missing required key")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:15:")) << message;
}

TEST(ConfigTest, CheckFailureNamesKey) {
  auto reader = ParseOk("[retry]\non_exhausted = \"explode\"\n");
  auto retry = reader.Root().Section("retry");
  std::string on_exhausted = "dead";
  EXPECT_FALSE(retry.Get("on_exhausted", on_exhausted, [](const std::string& v) {
    return v == "dead" || v == "force"
               ? Status::Ok()
               : Status(MakeError(ErrorCode::kInvalidArgument,
                                  "expected dead or force, got '" + v + "'"));
  }));
  EXPECT_EQ(on_exhausted, "dead");
  const auto message = FinishError(reader);
  EXPECT_TRUE(Contains(message, "test.toml:2: retry.on_exhausted: expected dead or force"))
      << message;
}

TEST(ConfigTest, WrongShapes) {
  auto reader = ParseOk("retry = 5\ndp = \"x\"\n[limits]\nmax_frames = 4\n");
  auto root = reader.Root();
  milliseconds base{1};
  EXPECT_FALSE(root.Section("retry").Get("base", base));
  EXPECT_TRUE(root.Sections("dp").empty());
  root.Section("limits").AddError("max_frames", "must be at least 8");
  const auto message = FinishError(reader);
  EXPECT_TRUE(Contains(message, "test.toml:1: retry: expected a table, got an integer")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:2: dp: expected an array of tables")) << message;
  EXPECT_TRUE(Contains(message, "test.toml:4: limits.max_frames: must be at least 8")) << message;
}

TEST(ConfigTest, SyntaxErrorNamesFileAndLine) {
  auto reader = ConfigReader::Parse("a = 1\nb = \n", "broken.toml");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Contains(reader.error().message, "broken.toml:2:")) << reader.error().message;
  auto duplicate = ConfigReader::Parse("a = 1\na = 2\n", "dup.toml");
  ASSERT_FALSE(duplicate.ok());
  EXPECT_TRUE(Contains(duplicate.error().message, "dup.toml:2:")) << duplicate.error().message;
}

TEST(ConfigTest, LoadMissingFileIsInvalidArgument) {
  auto reader = ConfigReader::Load("/nonexistent/despool.toml");
  ASSERT_FALSE(reader.ok());
  EXPECT_EQ(reader.error().code, ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Contains(reader.error().message, "/nonexistent/despool.toml"));
}

// --- The example files in config/ ------------------------------------------------------------

std::filesystem::path ConfigDir() {
  if (const char* source = std::getenv("DESPOOL_SOURCE_DIR")) {
    return std::filesystem::path(source) / "config";
  }
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "config";
}

ConfigReader LoadExample(const std::string& name) {
  const auto path = ConfigDir() / name;
  auto reader = ConfigReader::Load(path.string());
  EXPECT_TRUE(reader.ok()) << path << ": " << (reader.ok() ? "" : reader.error().message);
  return std::move(reader).value();
}

void ExpectLogSection(ConfigSection root) {
  auto log = root.Section("log");
  std::string level, format;
  EXPECT_TRUE(log.Get("level", level));
  EXPECT_TRUE(log.Get("format", format));
  EXPECT_EQ(level, "info");
  EXPECT_EQ(format, "text");
}

// Each example is read with the keys and defaults CONTRACT.md gives; Finish() proves the file
// holds no other keys. Program owners: keep this in step with your loader.
TEST(ConfigExamplesTest, Broker) {
  auto reader = LoadExample("broker.toml");
  auto root = reader.Root();
  std::string frontend, backend, events, store;
  std::uint64_t retention = 0;
  EXPECT_TRUE(root.Get("frontend", frontend));
  EXPECT_TRUE(root.Get("backend", backend));
  EXPECT_TRUE(root.Get("events", events));
  EXPECT_TRUE(root.Get("store", store));
  EXPECT_TRUE(root.Get("event_retention", retention));
  EXPECT_EQ(frontend, "tcp://127.0.0.1:7400");
  EXPECT_EQ(backend, "tcp://127.0.0.1:7401");
  EXPECT_EQ(events, "tcp://127.0.0.1:7402");
  EXPECT_EQ(store, "./despool-data/broker.db");
  EXPECT_EQ(retention, 100000u);
  ExpectLogSection(root);

  auto retry = root.Section("retry");
  milliseconds base{}, max{};
  std::uint32_t attempts = 0;
  std::string on_exhausted;
  EXPECT_TRUE(retry.Get("base", base));
  EXPECT_TRUE(retry.Get("max", max));
  EXPECT_TRUE(retry.Get("max_attempts", attempts));
  EXPECT_TRUE(retry.Get("on_exhausted", on_exhausted));
  EXPECT_EQ(base, std::chrono::seconds(30));
  EXPECT_EQ(max, std::chrono::hours(1));
  EXPECT_EQ(attempts, 10u);
  EXPECT_EQ(on_exhausted, "dead");

  auto limits = root.Section("limits");
  std::uint64_t frame = 0, message = 0, frames = 0;
  EXPECT_TRUE(limits.Get("max_frame_bytes", frame));
  EXPECT_TRUE(limits.Get("max_message_bytes", message));
  EXPECT_TRUE(limits.Get("max_frames", frames));
  EXPECT_EQ(frame, 4u << 20);
  EXPECT_EQ(message, 64u << 20);
  EXPECT_EQ(frames, 4u);
  double rate = -1, burst = 0;
  EXPECT_TRUE(limits.Get("requests_per_second", rate));
  EXPECT_TRUE(limits.Get("request_burst", burst));
  EXPECT_EQ(rate, 0.0);
  EXPECT_EQ(burst, 200.0);
  root.Section("security");  // all keys commented out: CURVE is opt-in (docs/security.md)
  auto http = root.Section("http");  // off by default (docs/observability.md)
  std::string http_listen = "x", http_token = "x";
  EXPECT_TRUE(http.Get("listen", http_listen));
  EXPECT_TRUE(http.Get("token", http_token));
  EXPECT_EQ(http_listen, "");
  EXPECT_EQ(http_token, "");

  auto heartbeat = root.Section("heartbeat");
  milliseconds interval{};
  std::uint32_t liveness = 0;
  EXPECT_TRUE(heartbeat.Get("interval", interval));
  EXPECT_TRUE(heartbeat.Get("liveness", liveness));
  EXPECT_EQ(interval, std::chrono::seconds(1));
  EXPECT_EQ(liveness, 3u);

  std::vector<std::string> dps{"sentinel"};
  EXPECT_TRUE(root.Section("dps").Get("names", dps));
  EXPECT_TRUE(dps.empty());
  auto groups = root.Section("dp_groups");
  for (const auto& key : groups.Keys()) {
    std::vector<std::string> members;
    EXPECT_TRUE(groups.Get(key, members));
  }
  EXPECT_TRUE(reader.Finish().ok()) << reader.Finish().ToString();
}

TEST(ConfigExamplesTest, Worker) {
  auto reader = LoadExample("worker.toml");
  auto root = reader.Root();
  std::string broker;
  std::uint32_t concurrency = 0;
  std::uint64_t bandwidth = 1;
  EXPECT_TRUE(root.Get("broker", broker));
  std::string name;
  root.Get("name", name);  // optional: default is the host name
  EXPECT_TRUE(root.Get("concurrency", concurrency));
  EXPECT_TRUE(root.Get("max_bytes_per_second", bandwidth));
  EXPECT_EQ(broker, "tcp://127.0.0.1:7401");
  EXPECT_EQ(concurrency, 2u);
  EXPECT_EQ(bandwidth, 0u);
  ExpectLogSection(root);
  auto dps = root.Sections("dp");
  ASSERT_FALSE(dps.empty());
  for (auto& dp : dps) {
    std::string dp_name, dp_root;
    EXPECT_TRUE(
        dp.Require("name", dp_name, [](const std::string& n) { return ValidateDpName(n); }));
    EXPECT_TRUE(dp.Require("root", dp_root));
    EXPECT_EQ(dp_root.front(), '/');
  }
  EXPECT_TRUE(reader.Finish().ok()) << reader.Finish().ToString();
}

TEST(ConfigExamplesTest, Despoolctl) {
  auto reader = LoadExample("despoolctl.toml");
  auto root = reader.Root();
  std::string broker, events;
  milliseconds timeout{};
  bool json = true;
  EXPECT_TRUE(root.Get("broker", broker));
  EXPECT_TRUE(root.Get("events", events));
  EXPECT_TRUE(root.Get("timeout", timeout));
  EXPECT_TRUE(root.Get("json", json));
  EXPECT_EQ(broker, "tcp://127.0.0.1:7400");
  EXPECT_EQ(events, "tcp://127.0.0.1:7402");
  EXPECT_EQ(timeout, std::chrono::seconds(10));
  EXPECT_FALSE(json);
  ExpectLogSection(root);
  EXPECT_TRUE(reader.Finish().ok()) << reader.Finish().ToString();
}

TEST(ConfigExamplesTest, EveryExampleIsValidToml) {
  std::size_t count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(ConfigDir())) {
    if (entry.path().extension() != ".toml") continue;
    ++count;
    auto reader = ConfigReader::Load(entry.path().string());
    EXPECT_TRUE(reader.ok()) << entry.path() << ": " << (reader.ok() ? "" : reader.error().message);
  }
  EXPECT_GE(count, 3u);
}

}  // namespace
}  // namespace despool
