// The client library and despoolctl against the real despool-broker (DESPOOL_BIN_DIR) on
// ephemeral ports. Jobs stay queued here (no worker); the Python suite drives them further with
// a scripted worker.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "ctl/process.h"
#include "despool/ctl/client.h"

namespace despool::ctl {
namespace {

namespace fs = std::filesystem;
using despool::testing::Child;
using despool::testing::Ctl;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

class LiveBroker {
 public:
  LiveBroker() {
    std::string tmpl = (fs::temp_directory_path() / "despoolctl-live-XXXXXX").string();
    dir_ = mkdtemp(tmpl.data());
    std::ofstream(dir_ / "broker.toml") << "[dps]\nnames = [\"lab1\", \"lab2\"]\n";
    const auto ep_file = dir_ / "endpoints";
    child_ = std::make_unique<Child>(std::vector<std::string>{
        despool::testing::BinDir() + "/despool-broker", "--config", (dir_ / "broker.toml").string(), "--frontend",
        "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*", "--store",
        (dir_ / "data" / "broker.db").string(), "--endpoints-file", ep_file.string(), "--log-level", "warn"});
    // The broker writes the endpoints file once it listens; its log goes to our pipes, read
    // while polling so it can never block on a full pipe.
    const auto deadline = Clock::now() + milliseconds(20000);
    while (Clock::now() < deadline) {
      std::ifstream f(ep_file);
      std::map<std::string, std::string> kv;
      for (std::string line; std::getline(f, line);) {
        if (auto eq = line.find('='); eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
      }
      if (kv.size() >= 3) {
        frontend = kv["frontend"];
        events = kv["events"];
        return;
      }
      child_->ReadUntil([](const std::string&, const std::string&) { return false; }, milliseconds(20));
    }
  }
  ~LiveBroker() {
    child_.reset();  // SIGTERM, wait
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string frontend, events;
  std::string log() const { return child_->out() + child_->err(); }

 private:
  fs::path dir_;
  std::unique_ptr<Child> child_;
};

TEST(LiveBrokerTest, ClientSubmitStatusAndFollowEvents) {
  LiveBroker broker;
  ASSERT_FALSE(broker.frontend.empty()) << broker.log();
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend).ok());
  FollowOptions fo;
  fo.events_endpoint = broker.events;
  fo.dp = "lab1";
  EventFollower follower(client, fo);
  ASSERT_TRUE(follower.Start().ok());

  msg::SubmitRequest req;
  msg::Instruction ins;
  ins.package = "app";
  ins.version = 3;
  ins.source = "/srv/src/app-3";
  ins.dps = {"lab1", "lab2"};
  req.instructions.push_back(ins);
  auto refs = client.Submit(req, milliseconds(10000));
  ASSERT_TRUE(refs.ok()) << refs.error().message;
  ASSERT_EQ(refs->jobs.size(), 2u);
  EXPECT_EQ(refs->jobs[0].dp, "lab1");

  msg::StatusRequest st;
  st.job_id = refs->jobs[0].id;
  auto jobs = client.Status(st, milliseconds(10000));
  ASSERT_TRUE(jobs.ok()) << jobs.error().message;
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].state, msg::JobState::kQueued);

  // The queued event for lab1 arrives (live or from the store), once; lab2's never.
  std::vector<msg::Event> got;
  const auto deadline = Clock::now() + milliseconds(15000);
  while (got.empty() && Clock::now() < deadline) {
    auto e = follower.Next(milliseconds(200));
    ASSERT_TRUE(e.ok()) << e.error().message;
    if (e->has_value()) got.push_back(**e);
  }
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].job.id, refs->jobs[0].id);
  EXPECT_EQ(got[0].job.state, msg::JobState::kQueued);
  auto more = follower.Next(milliseconds(300));
  ASSERT_TRUE(more.ok());
  EXPECT_FALSE(more->has_value());

  msg::StatusRequest unknown;
  unknown.job_id = "no-such-job";
  auto nf = client.Status(unknown, milliseconds(10000));
  ASSERT_FALSE(nf.ok());
  EXPECT_EQ(nf.error().code, ErrorCode::kNotFound);
}

TEST(LiveBrokerTest, DespoolctlCommandsAgainstTheRealBroker) {
  LiveBroker broker;
  ASSERT_FALSE(broker.frontend.empty()) << broker.log();
  auto ctl = [&](std::vector<std::string> args) {
    std::vector<std::string> all{"--broker", broker.frontend, "--events", broker.events};
    all.insert(all.end(), args.begin(), args.end());
    return Ctl(all);
  };
  auto s = ctl({"--json", "submit", "--package", "app", "--version", "1", "--source", "/srv/src/app", "--dp", "lab1"});
  ASSERT_EQ(s.exit_code, 0) << s.err;
  const auto refs = nlohmann::json::parse(s.out);
  ASSERT_EQ(refs.size(), 1u);
  const std::string id = refs[0]["id"];

  auto st = ctl({"--json", "status", "--dp", "lab1"});
  ASSERT_EQ(st.exit_code, 0) << st.err;
  auto jobs = nlohmann::json::parse(st.out);
  ASSERT_EQ(jobs.size(), 1u);
  for (const char* key : {"id", "kind", "package", "version", "dp", "state", "attempts", "next_attempt_at",
                          "last_error", "in_use"}) {
    EXPECT_TRUE(jobs[0].contains(key)) << key;
  }
  EXPECT_EQ(jobs[0]["id"], id);
  EXPECT_EQ(jobs[0]["state"], "queued");

  {
    Child watch({despool::testing::Despoolctl(), "--broker", broker.frontend, "--events", broker.events, "--json",
                 "watch", "--since", "0", "--dp", "lab1"});
    ASSERT_TRUE(watch.ReadUntil([&](const std::string& out, const std::string&) {
      return out.find('\n') != std::string::npos;
    }, milliseconds(15000))) << watch.err();
    auto ev = nlohmann::json::parse(watch.out().substr(0, watch.out().find('\n')));
    EXPECT_EQ(ev["job"]["id"], id);
    EXPECT_EQ(ev["kind"], "state");
    EXPECT_GE(ev["seq"].get<std::uint64_t>(), 1u);
  }

  auto retry = ctl({"retry", id});  // not dead: the broker refuses (conflict)
  EXPECT_EQ(retry.exit_code, 1);
  EXPECT_NE(retry.err.find("conflict"), std::string::npos) << retry.err;
  auto cancel = ctl({"--json", "cancel", id});
  ASSERT_EQ(cancel.exit_code, 0) << cancel.err;
  EXPECT_EQ(nlohmann::json::parse(cancel.out)[0]["state"], "cancelled");
  EXPECT_EQ(ctl({"stats"}).exit_code, 0);
  EXPECT_EQ(ctl({"workers"}).exit_code, 0);
  EXPECT_EQ(ctl({"dead"}).exit_code, 0);
}

}  // namespace
}  // namespace despool::ctl
