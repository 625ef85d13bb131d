// /api/v1 against the real broker: the same shapes (and values) as `despoolctl --json`,
// pagination, filters, bad parameters, the bearer token.
#include "observability/obs_harness.h"

namespace despool::obs::testing {
namespace {

constexpr const char* kDps = "[dps]\nnames = [\"lab1\", \"lab2\"]\n";

std::string Header(const ObsBroker::Response& r, const std::string& name) {
  auto it = r.headers.find(name);
  return it == r.headers.end() ? "" : it->second;
}

json WithoutHeartbeat(json workers) {
  for (auto& w : workers) w.erase("last_heartbeat_at");
  return workers;
}

TEST(ObservabilityApi, ShapesEqualDespoolctlJson) {
  ObsBroker b(kDps);
  ASSERT_TRUE(b.Start()) << b.proc().Log();
  zmq::context_t ctx;
  Client c(ctx, b.proc().frontend);
  TestWorker w(ctx, b.proc().backend, "host-a/w1");
  ASSERT_TRUE(w.Register({"lab1"}, 1));

  auto app = Refresh("app", 2, {"lab1", "lab2"});
  app.policy.retry_base_ms = 3'600'000;
  app.policy.retry_max_ms = 3'600'000;
  auto refs = c.Submit(app);
  ASSERT_EQ(refs.size(), 2u);
  const std::string deferred_id = refs[0].dp == "lab1" ? refs[0].id : refs[1].id;
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 1; }, 10s));
  msg::JobResult r;
  r.job_id = w.dispatches[0].job_id;
  r.attempt = w.dispatches[0].attempt;
  r.outcome = msg::Outcome::kDeferred;
  r.in_use = {"bin/app.exe"};
  r.holders = {{31337, "smbd", "bin/app.exe"}};
  r.error = "1 file(s) in use";
  w.Send(r);
  ASSERT_TRUE(w.PumpUntil([&] { auto j = c.Status(deferred_id); return j && j->state == msg::JobState::kDeferred; }, 10s));
  auto tools = c.Submit(Refresh("tools", 7, {"lab1"}));
  ASSERT_EQ(tools.size(), 1u);
  ASSERT_TRUE(w.PumpUntil([&] { return w.dispatches.size() == 2; }, 10s));
  msg::JobResult applied;
  applied.job_id = w.dispatches[1].job_id;
  applied.attempt = w.dispatches[1].attempt;
  applied.outcome = msg::Outcome::kApplied;
  applied.stats = msg::ApplyStats{120, 3, 117, 1, 5 << 20, 1 << 20, 850};
  w.Send(applied);
  ASSERT_TRUE(w.PumpUntil([&] { auto j = c.Status(tools[0].id); return j && j->state == msg::JobState::kApplied; }, 10s));

  // Jobs, with and without filters: exactly what `despoolctl status --json` prints.
  const json all = b.GetJson("/api/v1/jobs?limit=1000");
  ASSERT_TRUE(all.is_array());
  EXPECT_EQ(all.size(), 3u);
  EXPECT_EQ(all, b.Ctl({"status"}));
  EXPECT_EQ(b.GetJson("/api/v1/jobs?dp=lab1"), b.Ctl({"status", "--dp", "lab1"}));
  EXPECT_EQ(b.GetJson("/api/v1/jobs?state=deferred"), b.Ctl({"status", "--state", "deferred"}));
  EXPECT_EQ(b.GetJson("/api/v1/jobs?package=tools&state=applied"),
            b.Ctl({"status", "--package", "tools", "--state", "applied"}));
  const json one = b.GetJson("/api/v1/jobs/" + deferred_id);
  const json ctl_one = b.Ctl({"status", deferred_id});
  ASSERT_TRUE(ctl_one.is_array() && ctl_one.size() == 1);
  EXPECT_EQ(one, ctl_one[0]);
  EXPECT_EQ(one["in_use"], json::array({"bin/app.exe"}));
  EXPECT_EQ(one["holders"][0]["command"], "smbd");
  EXPECT_TRUE(one["next_attempt_at"].is_string());
  EXPECT_EQ(b.GetJson("/api/v1/jobs/" + tools[0].id)["stats"]["files_copied"], 3);

  // Stats, DPs and workers come partly from the loop's snapshot (a few per second): poll.
  json stats;
  EXPECT_TRUE(w.PumpUntil([&] { stats = b.GetJson("/api/v1/stats"); return stats == b.Ctl({"stats"}); }, 10s))
      << "api: " << stats.dump() << "\nctl: " << b.Ctl({"stats"}).dump();
  EXPECT_EQ(stats["jobs_by_state"]["deferred"], 1);
  EXPECT_EQ(b.GetJson("/api/v1/dps"), stats["dps"]);
  json workers;
  EXPECT_TRUE(w.PumpUntil(
      [&] {
        workers = b.GetJson("/api/v1/workers");
        return WithoutHeartbeat(workers) == WithoutHeartbeat(b.Ctl({"workers"}));
      },
      10s))
      << workers.dump();
  ASSERT_EQ(workers.size(), 1u);
  EXPECT_EQ(workers[0].size(), b.Ctl({"workers"})[0].size());  // same keys, heartbeat included
  EXPECT_TRUE(workers[0]["last_heartbeat_at"].is_string());

  // Events: `watch --json` objects.
  const json events = b.GetJson("/api/v1/events?since=0&dp=lab1");
  ASSERT_TRUE(events.is_array());
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events[0]["kind"], "state");
  EXPECT_EQ(events[0]["seq"], 1);
  EXPECT_TRUE(events[0]["job"].contains("in_use"));
  EXPECT_TRUE(events[0].contains("progress"));
}

TEST(ObservabilityApi, PaginationAndFilters) {
  ObsBroker b(kDps);
  ASSERT_TRUE(b.Start()) << b.proc().Log();
  zmq::context_t ctx;
  Client c(ctx, b.proc().frontend);
  // No worker: every job stays queued, in submit order.
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    auto refs = c.Submit(Refresh("pkg" + std::to_string(i), 1, {i % 2 ? "lab2" : "lab1"}));
    ASSERT_EQ(refs.size(), 1u);
    ids.push_back(refs[0].id);
  }
  const json all = b.GetJson("/api/v1/jobs");
  ASSERT_EQ(all.size(), 7u);
  json joined = json::array();
  std::string path = "/api/v1/jobs?limit=3";
  std::vector<std::size_t> sizes;
  for (int page = 0; page < 5; ++page) {
    auto r = b.Get(path);
    ASSERT_EQ(r.status, 200) << r.body;
    json j = json::parse(r.body);
    sizes.push_back(j.size());
    for (auto& e : j) joined.push_back(e);
    const std::string next = Header(r, "X-Next-Offset");
    if (next.empty()) break;
    path = "/api/v1/jobs?limit=3&offset=" + next;
  }
  EXPECT_EQ(sizes, (std::vector<std::size_t>{3, 3, 1}));
  EXPECT_EQ(joined, all);

  const json lab2 = b.GetJson("/api/v1/jobs?dp=lab2");
  EXPECT_EQ(lab2.size(), 3u);
  for (const auto& j : lab2) EXPECT_EQ(j["dp"], "lab2");
  const json pkg = b.GetJson("/api/v1/jobs?package=pkg4");
  ASSERT_EQ(pkg.size(), 1u);
  EXPECT_EQ(pkg[0]["id"], ids[4]);
  EXPECT_EQ(b.GetJson("/api/v1/jobs?state=queued").size(), 7u);
  EXPECT_EQ(b.GetJson("/api/v1/jobs?state=dead").size(), 0u);
  EXPECT_EQ(b.GetJson("/api/v1/jobs?dp=lab1&offset=4").size(), 0u);
  EXPECT_EQ(b.GetJson("/api/v1/jobs?dp=lab1&limit=2&offset=2").size(), 2u);
}

TEST(ObservabilityApi, BadQueryParametersAre400WithAMessage) {
  ObsBroker b(kDps);
  ASSERT_TRUE(b.Start()) << b.proc().Log();
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"/api/v1/jobs?limit=0", "'limit'"},
      {"/api/v1/jobs?limit=1001", "'limit'"},
      {"/api/v1/jobs?limit=abc", "'limit'"},
      {"/api/v1/jobs?offset=-1", "'offset'"},
      {"/api/v1/jobs?state=bogus", "'state'"},
      {"/api/v1/jobs?dp=..", "'dp'"},
      {"/api/v1/jobs?package=a%2Fb", "'package'"},
      {"/api/v1/jobs?color=red", "unknown query parameter 'color'"},
      {"/api/v1/jobs?dp=lab1&dp=lab2", "more than once"},
      {"/api/v1/jobs/bad!id", "job id"},
      {"/api/v1/events?since=x", "'since'"},
      {"/api/v1/stats?x=1", "unknown query parameter"},
      {"/metrics?x=1", "unknown query parameter"},
  };
  for (const auto& [path, needle] : bad) {
    auto r = b.Get(path);
    EXPECT_EQ(r.status, 400) << path << ": " << r.body;
    json j = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << path << ": " << r.body;
    EXPECT_EQ(j["error"], "bad-request") << path;
    EXPECT_NE(j["message"].get<std::string>().find(needle), std::string::npos) << path << ": " << r.body;
  }
  auto missing = b.Get("/api/v1/jobs/nosuchjob-1");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(json::parse(missing.body)["error"], "not-found");
  EXPECT_EQ(b.Get("/api/v2/nothing").status, 404);
}

TEST(ObservabilityApi, BearerTokenGuardsDataNotThePage) {
  ObsBroker b(kDps, "s3cret-token");
  ASSERT_TRUE(b.Start()) << b.proc().Log();
  for (const char* path : {"/metrics", "/api/v1/stats", "/api/v1/jobs"}) {
    auto r = b.Get(path);
    EXPECT_EQ(r.status, 401) << path;
    EXPECT_EQ(Header(r, "WWW-Authenticate"), "Bearer") << path;
    EXPECT_EQ(b.Get(path, {{"Authorization", "Bearer wrong"}}).status, 401) << path;
    EXPECT_EQ(b.Get(path, {{"Authorization", "Bearer s3cret-token"}}).status, 200) << path;
  }
  // The static page carries no data; it sends the token it is given (?token=) itself.
  EXPECT_EQ(b.Get("/").status, 200);
  EXPECT_EQ(b.Get("/app.js").status, 200);
}

TEST(ObservabilityApi, NonLoopbackWithoutTokenIsAConfigError) {
  TempDir dir;
  const std::string cfg = dir / "broker.toml";
  std::ofstream(cfg) << "[http]\nlisten = \"0.0.0.0:0\"\n";
  auto r = RunProgram({BinDir() + "/despool-broker", "--config", cfg, "--store", dir / "b.db"}, 30s, dir / "err");
  EXPECT_EQ(r.exit_code, 2);
  std::ifstream e(dir / "err");
  std::stringstream ss;
  ss << e.rdbuf();
  EXPECT_NE(ss.str().find("needs a bearer token"), std::string::npos) << ss.str();
  auto bad = RunProgram({BinDir() + "/despool-broker", "--http", "localhost", "--store", dir / "b.db"}, 30s);
  EXPECT_EQ(bad.exit_code, 2);
  // A name that merely starts like a loopback address is not one.
  auto named = RunProgram({BinDir() + "/despool-broker", "--http", "127.example.com:0", "--store", dir / "b.db"}, 30s);
  EXPECT_EQ(named.exit_code, 2);
}

}  // namespace
}  // namespace despool::obs::testing
