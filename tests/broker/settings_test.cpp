// Broker configuration: the shipped example loads, extras parse, mistakes name the key.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "despool/broker/settings.h"

namespace despool::broker {
namespace {

std::string WriteConfig(const std::string& text) {
  const std::string path = ::testing::TempDir() + "/broker_settings_" + std::to_string(::getpid()) + ".toml";
  std::ofstream(path) << text;
  return path;
}

TEST(BrokerSettings, TheExampleConfigLoadsWithTheContractDefaults) {
  const char* src = std::getenv("DESPOOL_SOURCE_DIR");
  if (!src) GTEST_SKIP() << "DESPOOL_SOURCE_DIR not set";
  BrokerSettings s;
  Status st = LoadBrokerConfig(std::string(src) + "/config/broker.toml", s);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(s.frontend, "tcp://127.0.0.1:7400");
  EXPECT_EQ(s.backend, "tcp://127.0.0.1:7401");
  EXPECT_EQ(s.events, "tcp://127.0.0.1:7402");
  EXPECT_EQ(s.store_path, "./despool-data/broker.db");
  EXPECT_EQ(s.core.default_policy.retry_base_ms, 30'000u);
  EXPECT_EQ(s.core.default_policy.retry_max_ms, 3'600'000u);
  EXPECT_EQ(s.core.default_policy.max_attempts, 10u);
  EXPECT_EQ(s.max_frame_bytes, 4u << 20);
  EXPECT_EQ(s.max_message_bytes, 64ll << 20);
  EXPECT_EQ(s.max_frames, 4u);
  EXPECT_EQ(s.core.heartbeat_interval_ms, 1000);
  EXPECT_EQ(s.core.liveness, 3u);
}

TEST(BrokerSettings, EverySettingIsRead) {
  BrokerSettings s;
  Status st = LoadBrokerConfig(WriteConfig(R"(
frontend = "tcp://127.0.0.1:1"
store = "/tmp/x.db"
event_retention = 50
endpoints_file = "/tmp/ep"
[log]
level = "debug"
format = "json"
[retry]
base = "2s"
max = "1m"
max_attempts = 4
on_exhausted = "force"
[heartbeat]
interval = "250ms"
liveness = 5
orphan_grace = "10s"
[limits]
max_frame_bytes = 2048
max_message_bytes = 4096
max_frames = 3
[store_options]
synchronous = "normal"
commit_thread = false
[dps]
names = ["lab1", "lab2"]
[dp_groups]
labs = ["lab1", "lab3"]
)"), s);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(s.frontend, "tcp://127.0.0.1:1");
  EXPECT_EQ(s.store.events_retention, 50u);
  EXPECT_EQ(s.log_level, "debug");
  EXPECT_EQ(s.log_format, "json");
  EXPECT_EQ(s.core.default_policy.retry_base_ms, 2000u);
  EXPECT_EQ(s.core.default_policy.retry_max_ms, 60'000u);
  EXPECT_EQ(s.core.default_policy.max_attempts, 4u);
  EXPECT_EQ(s.core.default_policy.on_exhausted, msg::OnExhausted::kForce);
  EXPECT_EQ(s.core.heartbeat_interval_ms, 250);
  EXPECT_EQ(s.core.liveness, 5u);
  EXPECT_EQ(s.core.orphan_grace_ms, 10'000);
  EXPECT_EQ(s.max_frames, 3u);
  EXPECT_EQ(s.store.sync, SyncMode::kNormal);
  EXPECT_FALSE(s.commit_thread);
  EXPECT_EQ(s.core.dps, (std::vector<std::string>{"lab1", "lab2"}));
  EXPECT_EQ(s.core.dp_groups.at("labs"), (std::vector<std::string>{"lab1", "lab3"}));
}

TEST(BrokerSettings, MistakesNameTheKey) {
  struct Case {
    const char* text;
    const char* key;
  };
  for (const Case& c : {Case{"fronted = \"x\"\n", "fronted"}, Case{"[retry]\nbase = \"soon\"\n", "retry.base"},
                        Case{"[retry]\nbase = \"2m\"\nmax = \"1m\"\n", "retry.max"},
                        Case{"[dps]\nnames = [\"a/b\"]\n", "dps.names"},
                        Case{"[dp_groups]\ng = []\n", "dp_groups.g"},
                        Case{"[store_options]\nsynchronous = \"off\"\n", "store_options.synchronous"},
                        Case{"[limits]\nmax_frames = 1\n", "limits.max_frames"}}) {
    BrokerSettings s;
    Status st = LoadBrokerConfig(WriteConfig(c.text), s);
    ASSERT_FALSE(st.ok()) << c.text;
    EXPECT_NE(st.error().message.find(c.key), std::string::npos) << st.error().message;
  }
}

}  // namespace
}  // namespace despool::broker
