// despoolctl as a program: exit codes per failure class, golden --json shapes, --wait
// reporting, batch files and config files, against a scripted broker.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "ctl/fake_broker.h"
#include "ctl/process.h"
#include "despool/common/time.h"

namespace despool::ctl {
namespace {

namespace fs = std::filesystem;
using despool::testing::Child;
using despool::testing::Ctl;
using despool::testing::FakeBroker;
using despool::testing::MakeJob;
using despool::testing::RunResult;
using nlohmann::json;
using std::chrono::milliseconds;

constexpr std::int64_t kT0 = 1764100000000;  // 2025-11-25T19:46:40.000Z

std::string DeadEndpoint() {
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.set(zmq::sockopt::linger, 0);
  s.bind("tcp://127.0.0.1:*");
  return s.get(zmq::sockopt::last_endpoint);
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "despoolctl-test-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path Write(const std::string& name, const std::string& text) const {
    const auto p = path_ / name;
    std::ofstream(p) << text;
    return p;
  }

 private:
  fs::path path_;
};

msg::JobInfo DeferredJob() {
  auto j = MakeJob("j-deferred", "lab1", "app", 42, msg::JobState::kDeferred, kT0 + 1500);
  j.attempts = 3;
  j.next_attempt_at_ms = kT0 + 42123;
  j.last_error = "2 files in use";
  j.in_use = {"bin/app", "lib/x.so"};
  j.holders = {{4242, "app", "bin/app"}};
  return j;
}

msg::JobInfo VerifyJob() {
  auto j = MakeJob("j-verify", "lab1", "app", 0, msg::JobState::kApplied, kT0 + 1500);
  j.kind = msg::JobKind::kVerify;
  j.source.clear();
  j.worker = "w1";
  j.report = msg::VerifyReport{{"a/missing"}, {}, {"c/changed"}};
  return j;
}

// Answers the frontend requests the tests need; a submit creates one queued job per DP.
struct Script {
  std::vector<msg::JobInfo> status_jobs;
  // After a submit: the states each new job goes through at once (stored and published).
  std::vector<msg::JobState> after_submit{msg::JobState::kQueued};
  std::optional<msg::ErrorReply> submit_error;

  FakeBroker::Handler Handler() {
    return [this](const msg::Envelope& req, FakeBroker& b) -> std::optional<msg::Body> {
      if (const auto* s = std::get_if<msg::SubmitRequest>(&req.body)) {
        if (submit_error) return *submit_error;
        msg::SubmitReply r;
        int n = 0;
        for (const auto& ins : s->instructions) {
          for (const auto& dp : ins.dps) {
            const std::string id = "job-" + std::to_string(req.request_id) + "-" + std::to_string(n++);
            r.jobs.push_back({id, dp});
            std::int64_t t = kT0;
            for (auto st : after_submit) b.Emit(MakeJob(id, dp, ins.package, ins.version, st, t++));
          }
        }
        return r;
      }
      if (std::holds_alternative<msg::StatusRequest>(req.body)) return msg::JobsReply{status_jobs};
      if (std::holds_alternative<msg::DeadRequest>(req.body)) return msg::JobsReply{status_jobs};
      if (const auto* r = std::get_if<msg::RetryRequest>(&req.body)) {
        auto j = MakeJob(r->job_id, "lab1", "app", 1, msg::JobState::kQueued, kT0);
        return msg::JobsReply{{j}};
      }
      if (const auto* r = std::get_if<msg::CancelRequest>(&req.body)) {
        if (r->job_id == "missing") return msg::ErrorReply{msg::ErrorKind::kNotFound, "unknown job 'missing'"};
        auto j = MakeJob(r->job_id, "lab1", "app", 1, msg::JobState::kCancelled, kT0);
        return msg::JobsReply{{j}};
      }
      if (std::holds_alternative<msg::WorkersRequest>(req.body)) {
        msg::WorkerInfo w;
        w.name = "w1";
        w.dps = {"lab1", "lab2"};
        w.capacity = 2;
        w.running = 1;
        w.connected_at_ms = kT0;
        w.last_heartbeat_ms = kT0 + 1500;
        return msg::WorkersReply{{w}};
      }
      if (std::holds_alternative<msg::StatsRequest>(req.body)) {
        msg::StatsReply s;
        s.jobs_by_state = {{msg::JobState::kQueued, 2}, {msg::JobState::kDead, 1}};
        s.dps = {{"lab1", true, 2, 0, 1}};
        s.workers = 1;
        s.queue_depth = 2;
        s.oldest_queued_at_ms = kT0;
        s.retry_backlog = 1;
        s.last_event_seq = 17;
        return s;
      }
      return std::nullopt;
    };
  }
};

std::vector<std::string> At(const FakeBroker& b, std::vector<std::string> args) {
  std::vector<std::string> all{"--broker", b.frontend(), "--events", b.events(), "--timeout", "5s"};
  all.insert(all.end(), args.begin(), args.end());
  return all;
}

// ---------------------------------------------------------------------------------------------
// Exit codes

class UsageTest : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(UsageTest, ExitsTwoWithAMessageAndNoOutput) {
  auto r = Ctl(GetParam(), milliseconds(10000));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err, "");
  EXPECT_EQ(r.err.rfind("despoolctl: ", 0), 0u) << r.err;
}

INSTANTIATE_TEST_SUITE_P(
    Despoolctl, UsageTest,
    ::testing::Values(std::vector<std::string>{}, std::vector<std::string>{"frobnicate"},
                      std::vector<std::string>{"--bogus", "status"},
                      std::vector<std::string>{"status", "--limit", "-1"},
                      std::vector<std::string>{"status", "--limit", "4294967296"},
                      std::vector<std::string>{"status", "--state", "sleeping"},
                      std::vector<std::string>{"status", "bad/id"},
                      std::vector<std::string>{"--timeout", "-5s", "status"},
                      std::vector<std::string>{"--timeout", "soon", "status"},
                      std::vector<std::string>{"--timeout", "0", "status"},
                      std::vector<std::string>{"submit", "--package", "app", "--version", "1", "--source", "/s"},
                      std::vector<std::string>{"submit", "--package", "app", "--version", "-1", "--source", "/s",
                                               "--dp", "a"},
                      std::vector<std::string>{"submit", "--package", "app", "--version", "9007199254740992",
                                               "--source", "/s", "--dp", "a"},
                      std::vector<std::string>{"submit", "--package", "../x", "--version", "1", "--source", "/s",
                                               "--dp", "a"},
                      std::vector<std::string>{"submit", "--package", "app", "--version", "1", "--source", "/s",
                                               "--dp", "a", "--max-attempts", "-3"},
                      std::vector<std::string>{"submit", "--package", "app", "--version", "1", "--source", "/s",
                                               "--dp", "a", "--on-exhausted", "maybe"},
                      std::vector<std::string>{"submit", "--package", "app", "--version", "1", "--source", "/s",
                                               "--dp", "a", "--wait-timeout", "5s"},
                      std::vector<std::string>{"submit", "--package", "app", "--version", "1", "--source", "/s",
                                               "--dp", "a", "--retry-base", "2m", "--retry-max", "1m"},
                      std::vector<std::string>{"submit", "--version"},
                      std::vector<std::string>{"watch", "--since", "-1"},
                      std::vector<std::string>{"verify"},
                      std::vector<std::string>{"retry"},
                      std::vector<std::string>{"cancel", "a", "b"},
                      std::vector<std::string>{"--config", "/nonexistent/despoolctl.toml", "status"}));

TEST(DespoolctlTest, VersionAndHelpExitZero) {
  auto v = Ctl({"--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(v.out, std::string("despoolctl ") + DESPOOL_VERSION + "\n");
  auto h = Ctl({"--help"});
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_NE(h.out.find("submit"), std::string::npos);
  auto sh = Ctl({"submit", "--help"});
  EXPECT_EQ(sh.exit_code, 0);
  EXPECT_NE(sh.out.find("--wait-timeout"), std::string::npos);
}

TEST(DespoolctlTest, UnreachableBrokerExitsOneWithinTimeoutNamingTheEndpoint) {
  const std::string ep = DeadEndpoint();
  for (const std::vector<std::string>& cmd : std::vector<std::vector<std::string>>{
           {"status"}, {"stats"}, {"workers"}, {"watch"},
           {"submit", "--package", "app", "--version", "1", "--source", "/s", "--dp", "a", "--wait"}}) {
    std::vector<std::string> args{"--broker", ep, "--events", ep, "--timeout", "400ms"};
    args.insert(args.end(), cmd.begin(), cmd.end());
    auto r = Ctl(args, milliseconds(10000));
    EXPECT_EQ(r.exit_code, 1) << cmd[0] << ": " << r.err;
    EXPECT_NE(r.err.find(ep), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("did not answer within 400ms"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_LT(r.elapsed, milliseconds(3000)) << cmd[0];
  }
}

TEST(DespoolctlTest, UnknownJobExitsOne) {
  FakeBroker broker;
  auto r = Ctl(At(broker, {"status", "no-such-job"}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown job 'no-such-job'"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
  Script script;
  FakeBroker b2(script.Handler());
  auto c = Ctl(At(b2, {"cancel", "missing"}));
  EXPECT_EQ(c.exit_code, 1);
  EXPECT_NE(c.err.find("not-found"), std::string::npos) << c.err;
}

TEST(DespoolctlTest, RejectedSubmitExitsOneWithTheBrokersReason) {
  Script script;
  script.submit_error = msg::ErrorReply{msg::ErrorKind::kUnknownDp, "unknown DP 'nowhere'"};
  FakeBroker broker(script.Handler());
  auto r = Ctl(At(broker, {"submit", "--package", "app", "--version", "1", "--source", "/s", "--dp", "nowhere"}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("unknown DP 'nowhere'"), std::string::npos) << r.err;
}

// ---------------------------------------------------------------------------------------------
// Golden --json shapes

TEST(DespoolctlJsonTest, StatusJsonGolden) {
  Script script;
  script.status_jobs = {DeferredJob(), VerifyJob()};
  FakeBroker broker(script.Handler());
  auto r = Ctl(At(broker, {"--json", "status"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, R"([
  {
    "attempts": 3,
    "created_at": "2025-11-25T19:46:40.000Z",
    "dp": "lab1",
    "holders": [
      {
        "command": "app",
        "path": "bin/app",
        "pid": 4242
      }
    ],
    "id": "j-deferred",
    "in_use": [
      "bin/app",
      "lib/x.so"
    ],
    "kind": "refresh",
    "last_error": "2 files in use",
    "max_attempts": 10,
    "next_attempt_at": "2025-11-25T19:47:22.123Z",
    "package": "app",
    "source": "/srv/src/app-42",
    "state": "deferred",
    "stats": null,
    "updated_at": "2025-11-25T19:46:41.500Z",
    "version": 42,
    "worker": null
  },
  {
    "attempts": 0,
    "created_at": "2025-11-25T19:46:40.000Z",
    "dp": "lab1",
    "holders": [],
    "id": "j-verify",
    "in_use": [],
    "kind": "verify",
    "last_error": null,
    "max_attempts": 10,
    "next_attempt_at": null,
    "package": "app",
    "report": {
      "changed": [
        "c/changed"
      ],
      "extra": [],
      "missing": [
        "a/missing"
      ]
    },
    "source": "",
    "state": "applied",
    "stats": null,
    "updated_at": "2025-11-25T19:46:41.500Z",
    "version": 0,
    "worker": "w1"
  }
]
)");
}

TEST(DespoolctlJsonTest, StatusOfOneJobIsAnArrayOfOne) {
  FakeBroker broker;
  broker.SetJob(DeferredJob());
  auto r = Ctl(At(broker, {"status", "j-deferred", "--json"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = json::parse(r.out);
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["id"], "j-deferred");
  EXPECT_EQ(j[0]["next_attempt_at"], "2025-11-25T19:47:22.123Z");
}

TEST(DespoolctlJsonTest, SubmitJsonIsAnArrayOfIdAndDp) {
  Script script;
  FakeBroker broker(script.Handler());
  auto r = Ctl(At(broker, {"--json", "submit", "--package", "app", "--version", "7", "--source", "/srv/src/app",
                           "--dp", "lab1", "--dp", "lab2"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j, json::parse(R"([{"dp":"lab1","id":"job-1-0"},{"dp":"lab2","id":"job-1-1"}])")) << r.out;
}

TEST(DespoolctlJsonTest, WorkersStatsRetryCancelGolden) {
  Script script;
  FakeBroker broker(script.Handler());
  auto w = Ctl(At(broker, {"--json", "workers"}));
  ASSERT_EQ(w.exit_code, 0) << w.err;
  EXPECT_EQ(json::parse(w.out), json::parse(R"([{"capacity":2,"connected_at":"2025-11-25T19:46:40.000Z",
      "dps":["lab1","lab2"],"draining":false,"last_heartbeat_at":"2025-11-25T19:46:41.500Z","name":"w1",
      "running":1}])"));
  auto s = Ctl(At(broker, {"--json", "stats"}));
  ASSERT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(json::parse(s.out), json::parse(R"({
      "dps":[{"deferred":1,"dp":"lab1","online":true,"queued":2,"running":0}],
      "jobs_by_state":{"applied":0,"cancelled":0,"dead":1,"deferred":0,"queued":2,"running":0,
                       "superseded":0,"up-to-date":0},
      "last_event_seq":17,"oldest_queued_at":"2025-11-25T19:46:40.000Z","queue_depth":2,
      "retry_backlog":1,"workers":1})"));
  auto rt = Ctl(At(broker, {"--json", "retry", "j-9"}));
  ASSERT_EQ(rt.exit_code, 0) << rt.err;
  auto rj = json::parse(rt.out);
  ASSERT_EQ(rj.size(), 1u);
  EXPECT_EQ(rj[0]["state"], "queued");
  auto c = Ctl(At(broker, {"--json", "cancel", "j-9"}));
  ASSERT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(json::parse(c.out)[0]["state"], "cancelled");
}

// ---------------------------------------------------------------------------------------------
// Human output

TEST(DespoolctlTest, StatusTableShowsRelativeRetryTimeAndAttempts) {
  Script script;
  auto j = DeferredJob();
  j.next_attempt_at_ms = NowMs() + 42500;
  j.updated_at_ms = NowMs() - 180000;
  script.status_jobs = {j};
  FakeBroker broker(script.Handler());
  auto r = Ctl(At(broker, {"status"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("ID", 0), 0u) << r.out;
  EXPECT_NE(r.out.find("retry in 4"), std::string::npos) << r.out;  // 42s or 41s
  EXPECT_NE(r.out.find("3 attempts"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("3m ago"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("in use: bin/app, lib/x.so (pid 4242 app holds bin/app)"), std::string::npos) << r.out;
  // Aligned: the STATE column starts at the same offset on both lines.
  const auto nl = r.out.find('\n');
  const std::string header = r.out.substr(0, nl);
  const std::string row = r.out.substr(nl + 1);
  EXPECT_EQ(header.find("STATE"), row.find(" deferred") + 1) << r.out;
}

TEST(DespoolctlTest, SubmitPrintsJobIdTabDpAndSendsTheInstruction) {
  Script script;
  FakeBroker broker(script.Handler());
  auto r = Ctl(At(broker, {"submit", "--package", "app", "--version", "9007199254740991", "--source",
                           "/srv/src/app/", "--dp", "lab1", "--dp-group", "eu", "--retry-base", "250ms",
                           "--retry-max", "2m", "--max-attempts", "4", "--on-exhausted", "force", "--checksum"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "job-1-0\tlab1\n");
  auto reqs = broker.requests();
  ASSERT_EQ(reqs.size(), 1u);
  const auto& s = std::get<msg::SubmitRequest>(reqs[0].body);
  ASSERT_EQ(s.instructions.size(), 1u);
  const auto& ins = s.instructions[0];
  EXPECT_EQ(ins.package, "app");
  EXPECT_EQ(ins.version, 9007199254740991u);
  EXPECT_EQ(ins.source, "/srv/src/app");
  EXPECT_EQ(ins.dps, std::vector<std::string>{"lab1"});
  EXPECT_EQ(ins.dp_groups, std::vector<std::string>{"eu"});
  EXPECT_EQ(ins.policy.retry_base_ms, std::optional<std::uint64_t>(250));
  EXPECT_EQ(ins.policy.retry_max_ms, std::optional<std::uint64_t>(120000));
  EXPECT_EQ(ins.policy.max_attempts, std::optional<std::uint32_t>(4));
  EXPECT_EQ(ins.policy.on_exhausted, std::optional<msg::OnExhausted>(msg::OnExhausted::kForce));
  EXPECT_TRUE(ins.checksum);
}

TEST(DespoolctlTest, BatchFileIsOneSubmitRequest) {
  TempDir dir;
  const auto file = dir.Write("release.toml", R"(
retry_base = "10s"
dps = ["lab1"]

[[instruction]]
package = "app"
version = 3
source = "/srv/src/app-3"

[[instruction]]
package = "tools"
version = 8
source = "tools-8"           # relative to this file
dps = ["lab1", "lab2"]
max_attempts = 2
)");
  Script script;
  FakeBroker broker(script.Handler());
  auto r = Ctl(At(broker, {"submit", "--file", file.string()}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "job-1-0\tlab1\njob-1-1\tlab1\njob-1-2\tlab2\n");
  ASSERT_EQ(broker.request_count("submit"), 1u);
  const auto s = std::get<msg::SubmitRequest>(broker.requests()[0].body);
  ASSERT_EQ(s.instructions.size(), 2u);
  EXPECT_EQ(s.instructions[0].dps, std::vector<std::string>{"lab1"});
  EXPECT_EQ(s.instructions[0].policy.retry_base_ms, std::optional<std::uint64_t>(10000));
  EXPECT_EQ(s.instructions[1].source, (dir.path() / "tools-8").string());
  EXPECT_EQ(s.instructions[1].policy.max_attempts, std::optional<std::uint32_t>(2));
}

TEST(DespoolctlTest, BadBatchFileExitsTwoNamingTheLine) {
  TempDir dir;
  const auto file = dir.Write("bad.toml", "[[instruction]]\npackage = \"app\"\nversion = -3\nsource = \"/s\"\n");
  FakeBroker broker;
  auto r = Ctl(At(broker, {"submit", "--file", file.string(), "--dp", "lab1"}));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("bad.toml:3"), std::string::npos) << r.err;
  EXPECT_EQ(broker.request_count("submit"), 0u);
  const auto unknown = dir.Write("unknown.toml", "[[instruction]]\npackage = \"app\"\nversion = 1\nsource = \"/s\"\nflavour = 1\n");
  auto u = Ctl(At(broker, {"submit", "--file", unknown.string(), "--dp", "lab1"}));
  EXPECT_EQ(u.exit_code, 2);
  EXPECT_NE(u.err.find("unknown key 'flavour'"), std::string::npos) << u.err;
}

TEST(DespoolctlTest, ConfigFileSuppliesEndpointsAndFlagsWin) {
  Script script;
  FakeBroker broker(script.Handler());
  TempDir dir;
  const auto cfg = dir.Write("despoolctl.toml", "broker = \"" + broker.frontend() + "\"\nevents = \"" +
                                                    broker.events() + "\"\ntimeout = \"5s\"\njson = true\n[log]\nlevel = \"warn\"\n");
  auto r = Ctl({"--config", cfg.string(), "stats"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(json::parse(r.out).is_object()) << "json = true from the config";
  const std::string dead = DeadEndpoint();
  auto f = Ctl({"--config", cfg.string(), "--broker", dead, "--timeout", "300ms", "stats"});
  EXPECT_EQ(f.exit_code, 1);
  EXPECT_NE(f.err.find(dead), std::string::npos) << "the flag wins over the config: " << f.err;
  const auto bad = dir.Write("bad.toml", "brokr = \"x\"\n");
  auto b = Ctl({"--config", bad.string(), "stats"});
  EXPECT_EQ(b.exit_code, 2);
  EXPECT_NE(b.err.find("unknown key 'brokr'"), std::string::npos) << b.err;
}

// ---------------------------------------------------------------------------------------------
// submit --wait

std::vector<std::string> SubmitWait(const FakeBroker& b, std::vector<std::string> extra) {
  std::vector<std::string> args{"submit", "--package", "app", "--version", "5", "--source", "/srv/src/app",
                                "--dp", "lab1", "--wait"};
  args.insert(args.end(), extra.begin(), extra.end());
  return At(b, args);
}

TEST(DespoolctlWaitTest, DeadJobExitsThree) {
  Script script;
  script.after_submit = {msg::JobState::kQueued, msg::JobState::kRunning, msg::JobState::kDead};
  FakeBroker broker(script.Handler());
  auto r = Ctl(SubmitWait(broker, {}));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.out.find("job-2-0\tlab1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("job-2-0\tlab1\tdead"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("dead"), std::string::npos) << r.err;
}

TEST(DespoolctlWaitTest, CancelledJobExitsThree) {
  Script script;
  script.after_submit = {msg::JobState::kQueued, msg::JobState::kCancelled};
  FakeBroker broker(script.Handler());
  auto r = Ctl(SubmitWait(broker, {"--json"}));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  auto j = json::parse(r.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["state"], "cancelled");
}

TEST(DespoolctlWaitTest, WaitTimeoutExitsFour) {
  Script script;  // the job stays queued
  FakeBroker broker(script.Handler());
  auto r = Ctl(SubmitWait(broker, {"--wait-timeout", "500ms"}));
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_NE(r.err.find("--wait-timeout 500ms passed"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("queued"), std::string::npos) << r.err;
  EXPECT_LT(r.elapsed, milliseconds(5000));
}

TEST(DespoolctlWaitTest, SupersededAndUpToDateAreSuccess) {
  for (auto st : {msg::JobState::kSuperseded, msg::JobState::kUpToDate, msg::JobState::kApplied}) {
    Script script;
    script.after_submit = {msg::JobState::kQueued, st};
    FakeBroker broker(script.Handler());
    auto r = Ctl(SubmitWait(broker, {"--json", "--wait-timeout", "20s"}));
    EXPECT_EQ(r.exit_code, 0) << msg::ToString(st) << ": " << r.err;
    EXPECT_EQ(json::parse(r.out)[0]["state"], msg::ToString(st));
  }
}

TEST(DespoolctlWaitTest, ReportsDeferralWithInUseFilesHoldersAndNextRetryThenSucceeds) {
  FakeBroker* broker_ptr = nullptr;
  FakeBroker broker([&](const msg::Envelope& req, FakeBroker& b) -> std::optional<msg::Body> {
    if (const auto* s = std::get_if<msg::SubmitRequest>(&req.body)) {
      const std::string id = "job-w";
      b.Emit(MakeJob(id, "lab1", s->instructions[0].package, 5, msg::JobState::kQueued, NowMs()));
      auto d = MakeJob(id, "lab1", "app", 5, msg::JobState::kDeferred, NowMs() + 1);
      d.attempts = 1;
      d.in_use = {"bin/app"};
      d.holders = {{777, "app", "bin/app"}};
      d.next_attempt_at_ms = NowMs() + 30000;
      b.Emit(d);
      return msg::SubmitReply{{{id, "lab1"}}};
    }
    return std::nullopt;
  });
  broker_ptr = &broker;
  std::vector<std::string> argv{despool::testing::Despoolctl()};
  auto args = SubmitWait(broker, {"--wait-timeout", "60s"});
  argv.insert(argv.end(), args.begin(), args.end());
  Child c(argv);
  ASSERT_TRUE(c.ReadUntil([](const std::string& out, const std::string&) { return out.find("deferred") != std::string::npos; },
                          milliseconds(20000)))
      << c.out() << c.err();
  broker_ptr->Emit(MakeJob("job-w", "lab1", "app", 5, msg::JobState::kApplied, NowMs() + 2));
  auto r = c.Wait(milliseconds(20000));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("job-w\tlab1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("job-w\tlab1\tdeferred: retry in "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 attempt, in use: bin/app (pid 777 app holds bin/app)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("next attempt at 20"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("job-w\tlab1\tapplied"), std::string::npos) << r.out;
}

// ---------------------------------------------------------------------------------------------
// watch without a terminal

TEST(DespoolctlWatchTest, OneLinePerEventAndJsonLines) {
  FakeBroker broker;
  broker.Emit(MakeJob("j1", "lab1", "app", 1, msg::JobState::kQueued, kT0));
  broker.Emit(MakeJob("j1", "lab1", "app", 1, msg::JobState::kApplied, kT0 + 1));
  broker.Emit(MakeJob("j2", "lab2", "app", 1, msg::JobState::kQueued, kT0 + 2));
  {
    std::vector<std::string> argv{despool::testing::Despoolctl()};
    auto a = At(broker, {"watch", "--dp", "lab1", "--since", "0"});
    argv.insert(argv.end(), a.begin(), a.end());
    Child c(argv);
    ASSERT_TRUE(c.ReadUntil([](const std::string& out, const std::string&) {
      return std::count(out.begin(), out.end(), '\n') >= 2;
    }, milliseconds(20000))) << c.out() << c.err();
    EXPECT_NE(c.out().find("2025-11-25T19:46:40.000Z #1 lab1 app v1 job j1 queued\n"), std::string::npos) << c.out();
    EXPECT_NE(c.out().find("#2 lab1 app v1 job j1 applied"), std::string::npos) << c.out();
    EXPECT_EQ(c.out().find("lab2"), std::string::npos) << c.out();
  }
  std::vector<std::string> argv{despool::testing::Despoolctl()};
  auto a = At(broker, {"--json", "watch", "--since", "1"});
  argv.insert(argv.end(), a.begin(), a.end());
  Child c(argv);
  ASSERT_TRUE(c.ReadUntil([](const std::string& out, const std::string&) {
    return std::count(out.begin(), out.end(), '\n') >= 2;
  }, milliseconds(20000))) << c.out() << c.err();
  std::istringstream lines(c.out());
  std::string line;
  std::vector<json> events;
  while (std::getline(lines, line)) events.push_back(json::parse(line));
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[0]["seq"], 2);
  EXPECT_EQ(events[0]["kind"], "state");
  EXPECT_EQ(events[0]["at"], "2025-11-25T19:46:40.001Z");
  EXPECT_EQ(events[0]["job"]["state"], "applied");
  EXPECT_TRUE(events[0]["progress"].is_null());
  EXPECT_EQ(events[1]["seq"], 3);
}

TEST(DespoolctlWatchTest, SinceOlderThanRetentionExitsOneNamingTheOldest) {
  FakeBroker broker;
  for (int i = 0; i < 3; ++i) broker.Emit(MakeJob("j", "lab1", "app", 1, msg::JobState::kQueued, kT0 + i));
  broker.SetOldestSeq(3);
  auto r = Ctl(At(broker, {"watch", "--since", "0"}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("oldest available is seq 3"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace despool::ctl
