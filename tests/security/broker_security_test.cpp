// The real broker with CURVE: who can connect, what each role may do, revocation, the bind
// policy, key-file permissions and the frontend rate limit (issue 9).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "security/security_harness.h"

namespace despool::security_testing {
namespace {

// How long a refused peer is given to get an answer it must not get. A refused CURVE handshake
// gives no reply at all; a valid one answers within milliseconds on loopback.
constexpr auto kRefusedWindow = 1500ms;

class SecureBroker : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(BinDir().empty());
    publisher = ring.Authorize("alice", "publisher", "dps = [\"a\", \"b*\"]\npackages = [\"office*\"]");
    worker = ring.Authorize("w1", "worker", "dps = [\"a\", \"b1\"]");
    subscriber = ring.Authorize("watcher", "subscriber");
    admin = ring.Authorize("root", "admin");
    revoked = ring.Authorize("mallory", "admin");
  }

  void StartBroker(const std::string& extra = "") {
    broker = std::make_unique<BrokerProcess>(dir.path(),
                                             ring.Config("revoked = [\"mallory\"]\n" + extra) +
                                                 "[dps]\nnames = [\"a\", \"b1\", \"c\"]\n");
    ASSERT_TRUE(broker->Start()) << broker->Log();
  }

  void TearDown() override {
    if (broker) {
      EXPECT_EQ(broker->Stop(), 0) << broker->Log();
    }
  }

  std::size_t JobCount() {
    CurveClient c(ctx, broker->frontend, ring.ClientOf(admin));
    auto r = c.Call(msg::StatusRequest{});
    EXPECT_TRUE(r && std::holds_alternative<msg::JobsReply>(*r));
    return r && std::holds_alternative<msg::JobsReply>(*r) ? std::get<msg::JobsReply>(*r).jobs.size() : 999;
  }

  TempDir dir;
  KeyRing ring{dir};
  CurveKeyPair publisher, worker, subscriber, admin, revoked;
  zmq::context_t ctx{1};
  std::unique_ptr<BrokerProcess> broker;
};

TEST_F(SecureBroker, NoKeyWrongKeyOrRevokedKeyCannotSubmitRegisterOrSubscribe) {
  StartBroker();
  const CurveKeyPair stranger = NewPair();
  struct Who {
    const char* name;
    std::optional<CurveClientConfig> curve;
  };
  CurveClientConfig wrong_server = ring.ClientOf(admin);
  wrong_server.server_public_key = NewPair().public_key;  // talks to an impostor's key
  const std::vector<Who> refused = {{"no key", std::nullopt},
                                    {"unknown key", ring.ClientOf(stranger)},
                                    {"revoked key", ring.ClientOf(revoked)},
                                    {"wrong server key", wrong_server}};
  // All at once, then one shared window: none of them may get any answer.
  std::vector<std::unique_ptr<CurveClient>> peers;
  for (const auto& who : refused) {
    peers.push_back(std::make_unique<CurveClient>(ctx, broker->frontend, who.curve));
    peers.back()->Send(msg::SubmitRequest{{Refresh("office1", 1, {"a"})}}, 1);
    peers.push_back(std::make_unique<CurveClient>(ctx, broker->backend, who.curve));
    peers.back()->Send(msg::Register{"w", {"a"}, 1}, 1);
  }
  const auto window_end = Clock::now() + kRefusedWindow;
  for (std::size_t i = 0; i < peers.size(); ++i) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(window_end - Clock::now());
    EXPECT_FALSE(peers[i]->Recv(std::max(left, 1ms))) << refused[i / 2].name << (i % 2 ? " register" : " submit");
  }
  EXPECT_EQ(JobCount(), 0u);
  // Subscribers without a valid key see nothing while an authorized one sees the event.
  std::vector<std::unique_ptr<CurveSubscriber>> bad_subs;
  for (const auto& who : refused) bad_subs.push_back(std::make_unique<CurveSubscriber>(ctx, broker->events, who.curve));
  CurveSubscriber good(ctx, broker->events, ring.ClientOf(subscriber));
  CurveClient pub(ctx, broker->frontend, ring.ClientOf(publisher));
  // Slow joiner: publish until the authorized subscriber sees an event (bounded).
  std::optional<std::string> topic;
  for (int v = 1; v <= 50 && !topic; ++v) {
    auto r = pub.Call(msg::SubmitRequest{{Refresh("office1", static_cast<std::uint64_t>(v), {"a"})}});
    ASSERT_TRUE(r && std::holds_alternative<msg::SubmitReply>(*r));
    topic = good.NextTopic(200ms);
  }
  ASSERT_TRUE(topic) << "authorized subscriber got no event";
  EXPECT_EQ(*topic, "dp/a/pkg/office1/");
  ASSERT_TRUE(pub.Call(msg::SubmitRequest{{Refresh("office1", 100, {"a"})}}));
  for (std::size_t i = 0; i < bad_subs.size(); ++i) {
    EXPECT_FALSE(bad_subs[i]->NextTopic(i == 0 ? kRefusedWindow : 100ms)) << refused[i].name;
  }
  const std::string log = broker->Log();
  EXPECT_NE(log.find("unknown or revoked key"), std::string::npos);
}

TEST_F(SecureBroker, PublisherOutsideItsGrantIsRefusedAndNothingIsStored) {
  StartBroker();
  CurveClient pub(ctx, broker->frontend, ring.ClientOf(publisher));
  struct Case {
    msg::Body request;
    const char* names;
  };
  msg::SubmitRequest two;  // one allowed and one refused instruction: nothing stored
  two.instructions = {Refresh("office1", 1, {"a"}), Refresh("office1", 1, {"c"})};
  const std::vector<Case> cases = {
      {msg::SubmitRequest{{Refresh("payroll", 1, {"a"})}}, "package 'payroll'"},
      {msg::SubmitRequest{{Refresh("office1", 1, {"c"})}}, "DP 'c'"},
      {two, "DP 'c'"},
      {msg::RetryRequest{"job-1"}, "admin only"},
      {msg::CancelRequest{"job-1"}, "admin only"},
      {msg::VerifyRequest{"c", std::nullopt, false}, "every package"},
  };
  for (const auto& c : cases) {
    auto r = pub.Call(c.request);
    const msg::ErrorReply* e = AsError(r);
    ASSERT_NE(e, nullptr) << msg::TypeName(c.request);
    EXPECT_EQ(e->kind, msg::ErrorKind::kNotAuthorized);
    EXPECT_NE(e->message.find(c.names), std::string::npos) << e->message;
    EXPECT_NE(e->message.find("alice"), std::string::npos) << e->message;
  }
  EXPECT_EQ(JobCount(), 0u);
  EXPECT_NE(broker->Log().find("request refused: not authorized side=frontend key=alice"), std::string::npos);
  // Inside the grant it works, reads too.
  auto ok = pub.Call(msg::SubmitRequest{{Refresh("office1", 1, {"a", "b1"})}});
  ASSERT_TRUE(ok && std::holds_alternative<msg::SubmitReply>(*ok));
  EXPECT_EQ(std::get<msg::SubmitReply>(*ok).jobs.size(), 2u);
  EXPECT_EQ(JobCount(), 2u);
  // A subscriber may read but change nothing; the admin may retry/cancel.
  CurveClient sub(ctx, broker->frontend, ring.ClientOf(subscriber));
  auto stats = sub.Call(msg::StatsRequest{});
  ASSERT_TRUE(stats && std::holds_alternative<msg::StatsReply>(*stats));
  const auto ro_reply = sub.Call(msg::SubmitRequest{{Refresh("office1", 2, {"a"})}});
  const msg::ErrorReply* ro = AsError(ro_reply);
  ASSERT_NE(ro, nullptr);
  EXPECT_EQ(ro->kind, msg::ErrorKind::kNotAuthorized);
  CurveClient root(ctx, broker->frontend, ring.ClientOf(admin));
  const std::string job = std::get<msg::SubmitReply>(*ok).jobs[0].id;
  auto cancelled = root.Call(msg::CancelRequest{job});
  ASSERT_TRUE(cancelled && std::holds_alternative<msg::JobsReply>(*cancelled));
  EXPECT_EQ(std::get<msg::JobsReply>(*cancelled).jobs.at(0).state, msg::JobState::kCancelled);
  // A worker key is not let into the frontend at all.
  CurveClient wf(ctx, broker->frontend, ring.ClientOf(worker));
  EXPECT_FALSE(wf.Call(msg::StatsRequest{}, kRefusedWindow));
}

TEST_F(SecureBroker, WorkerCannotRegisterAnUngrantedDp) {
  StartBroker();
  CurveClient w(ctx, broker->backend, ring.ClientOf(worker));
  const auto refused = w.Call(msg::Register{"w1-host", {"a", "c"}, 1});
  const msg::ErrorReply* e = AsError(refused);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->kind, msg::ErrorKind::kNotAuthorized);
  EXPECT_NE(e->message.find("DP 'c'"), std::string::npos) << e->message;
  EXPECT_NE(broker->Log().find("side=backend key=w1"), std::string::npos);
  // Not registered: the admin sees no worker, and a submit to 'c' is not dispatched to it.
  CurveClient root(ctx, broker->frontend, ring.ClientOf(admin));
  auto workers = root.Call(msg::WorkersRequest{});
  ASSERT_TRUE(workers && std::holds_alternative<msg::WorkersReply>(*workers));
  EXPECT_TRUE(std::get<msg::WorkersReply>(*workers).workers.empty());
  // The granted DPs register fine.
  w.Send(msg::Register{"w1-host", {"a", "b1"}, 1}, 0);
  auto ack = w.Await(0, 10s);  // backend messages carry id 0
  ASSERT_TRUE(ack);
  EXPECT_TRUE(std::holds_alternative<msg::RegisterAck>(*ack)) << msg::TypeName(*ack);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto r = root.Call(msg::WorkersRequest{});
        return r && std::holds_alternative<msg::WorkersReply>(*r) &&
               std::get<msg::WorkersReply>(*r).workers.size() == 1;
      },
      5s));
  // A publisher key is not let into the backend.
  CurveClient pw(ctx, broker->backend, ring.ClientOf(publisher));
  EXPECT_FALSE(pw.Call(msg::Register{"p", {"a"}, 1}, kRefusedWindow));
}

TEST_F(SecureBroker, RemovingAKeyFileRevokesIt) {
  StartBroker();
  CurveClient connected(ctx, broker->frontend, ring.ClientOf(publisher));
  ASSERT_TRUE(connected.Call(msg::StatsRequest{}));
  ring.Remove("alice");
  // The connection opened before gets not-authorized within about a second (the directory is
  // re-read once a second even without handshakes)...
  std::optional<msg::Body> reply;
  EXPECT_TRUE(WaitFor(
      [&] {
        reply = connected.Call(msg::StatsRequest{});
        return AsError(reply) != nullptr;
      },
      5s));
  // ...and a new connection with that key is refused.
  CurveClient fresh(ctx, broker->frontend, ring.ClientOf(publisher));
  EXPECT_FALSE(fresh.Call(msg::StatsRequest{}, kRefusedWindow));
  const msg::ErrorReply* e = AsError(reply);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->kind, msg::ErrorKind::kNotAuthorized);
  EXPECT_NE(e->message.find("alice"), std::string::npos) << e->message;
}

TEST_F(SecureBroker, FrontendRateLimitPerConnection) {
  StartBroker("[limits]\nrequests_per_second = 1\nrequest_burst = 5\n");
  CurveClient c(ctx, broker->frontend, ring.ClientOf(subscriber));
  std::vector<std::uint64_t> ids;
  for (int i = 0; i < 20; ++i) {
    ids.push_back(c.NextId());
    c.Send(msg::StatsRequest{}, ids.back());
  }
  int answered = 0, limited = 0;
  std::set<std::uint64_t> seen;
  while (seen.size() < ids.size()) {
    auto env = c.Recv(10s);
    ASSERT_TRUE(env) << "replies: " << seen.size();
    ASSERT_TRUE(seen.insert(env->request_id).second);
    const std::optional<msg::Body> r = env->body;
    if (const msg::ErrorReply* e = AsError(r)) {
      EXPECT_EQ(e->kind, msg::ErrorKind::kUnavailable);
      EXPECT_NE(e->message.find("rate limited"), std::string::npos);
      ++limited;
    } else {
      ++answered;
    }
  }
  EXPECT_GE(answered, 5);
  EXPECT_LE(answered, 7);  // the burst, plus what refilled meanwhile
  EXPECT_EQ(answered + limited, 20);
  // Another connection has its own bucket.
  CurveClient other(ctx, broker->frontend, ring.ClientOf(admin));
  auto r = other.Call(msg::StatsRequest{});
  ASSERT_TRUE(r);
  EXPECT_TRUE(std::holds_alternative<msg::StatsReply>(*r));
}

// Start-up refusals: exit 2 with a clear message, before anything is bound.
class BrokerStartup : public ::testing::Test {
 protected:
  // Loopback ephemeral endpoints unless `extra` names one.
  int Run(std::vector<std::string> extra, std::string* out) {
    std::vector<std::string> args = {BinDir() + "/despool-broker", "--store", dir / "data/broker.db"};
    for (const char* flag : {"--frontend", "--backend", "--events"}) {
      if (std::find(extra.begin(), extra.end(), flag) == extra.end()) {
        args.insert(args.end(), {flag, "tcp://127.0.0.1:*"});
      }
    }
    args.insert(args.end(), extra.begin(), extra.end());
    return RunProgram(args, out);
  }
  TempDir dir;
};

TEST_F(BrokerStartup, InsecureNonLoopbackBindRefusedWithoutInsecureFlag) {
  std::string out;
  EXPECT_EQ(Run({"--frontend", "tcp://0.0.0.0:*"}, &out), 2);
  EXPECT_NE(out.find("refusing to bind tcp://0.0.0.0:*"), std::string::npos) << out;
  EXPECT_NE(out.find("--insecure"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir / "data/broker.db"));  // refused before opening anything
  EXPECT_EQ(Run({"--events", "tcp://*:*"}, &out), 2);
}

TEST_F(BrokerStartup, WorldReadableSecretKeyRefused) {
  KeyRing ring(dir);
  ring.Authorize("root", "admin");
  std::ofstream(dir / "broker.toml") << ring.Config();
  ASSERT_EQ(::chmod(ring.SecretKeyPath().c_str(), 0644), 0);
  std::string out;
  EXPECT_EQ(Run({"--config", dir / "broker.toml"}, &out), 2);
  EXPECT_NE(out.find("chmod 600"), std::string::npos) << out;
  // A broken authorized key is a config error too.
  ASSERT_EQ(::chmod(ring.SecretKeyPath().c_str(), 0600), 0);
  std::ofstream(ring.AuthorizedDir() + "/bad.toml") << "public = \"x\"\nrole = \"admin\"\n";
  EXPECT_EQ(Run({"--config", dir / "broker.toml"}, &out), 2);
  EXPECT_NE(out.find("bad.toml"), std::string::npos) << out;
}

}  // namespace
}  // namespace despool::security_testing

namespace despool::security_testing {
namespace {

// The programs' own flags: despoolctl keygen, despoolctl and despool-worker with key files.
TEST_F(SecureBroker, DespoolctlAndWorkerUseTheirKeyFiles) {
  std::string out;
  ASSERT_EQ(RunProgram({BinDir() + "/despoolctl", "keygen", "--out", dir / "ops"}, &out), 0) << out;
  const std::string ops_public = out.substr(0, kZ85KeyLength);
  ASSERT_TRUE(IsZ85Key(ops_public)) << out;
  std::ofstream(ring.AuthorizedDir() + "/ops.toml") << "public = \"" << ops_public << "\"\nrole = \"admin\"\n";
  ASSERT_EQ(RunProgram({BinDir() + "/despoolctl", "keygen", "--out", dir / "wk"}, &out), 0) << out;
  std::ofstream(ring.AuthorizedDir() + "/wk.toml")
      << "public = \"" << out.substr(0, kZ85KeyLength) << "\"\nrole = \"worker\"\ndps = [\"a\"]\n";
  // keygen never overwrites.
  EXPECT_NE(RunProgram({BinDir() + "/despoolctl", "keygen", "--out", dir / "ops"}, &out), 0);
  StartBroker();

  const std::vector<std::string> ctl = {BinDir() + "/despoolctl", "--broker", broker->frontend,
                                        "--events", broker->events, "--timeout", "2s"};
  auto with = [](std::vector<std::string> a, std::vector<std::string> more) {
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  const std::vector<std::string> keys = {"--curve-server-key", ring.PublicKeyPath(), "--curve-key", dir / "ops.key"};
  EXPECT_EQ(RunProgram(with(ctl, with(keys, {"stats"})), &out), 0) << out;
  // Without keys: no answer within --timeout (exit 1); one key alone is a usage error.
  EXPECT_EQ(RunProgram(with(ctl, {"stats"}), &out), 1) << out;
  EXPECT_EQ(RunProgram(with(ctl, {"--curve-key", dir / "ops.key", "stats"}), &out), 2) << out;
  ASSERT_EQ(::chmod((dir / "ops.key").c_str(), 0640), 0);
  EXPECT_EQ(RunProgram(with(ctl, with(keys, {"stats"})), &out), 2) << out;
  EXPECT_NE(out.find("chmod 600"), std::string::npos) << out;
  ASSERT_EQ(::chmod((dir / "ops.key").c_str(), 0600), 0);

  // A real worker with its keys registers its granted DP.
  std::filesystem::create_directories(dir / "dp-a");
  const pid_t worker_pid = ::fork();
  if (worker_pid == 0) {
    testsupport::ExecWithOutputTo({BinDir() + "/despool-worker", "--broker", broker->backend, "--dp",
                                   "a=" + (dir / "dp-a"), "--name", "secure-worker", "--curve-server-key",
                                   ring.PublicKeyPath(), "--curve-key", dir / "wk.key"},
                                  dir / "worker.log");
  }
  ASSERT_GT(worker_pid, 0);
  CurveClient root(ctx, broker->frontend, ring.ClientOf(admin));
  const bool registered = WaitFor(
      [&] {
        auto r = root.Call(msg::WorkersRequest{});
        return r && std::holds_alternative<msg::WorkersReply>(*r) &&
               std::get<msg::WorkersReply>(*r).workers.size() == 1 &&
               std::get<msg::WorkersReply>(*r).workers[0].name == "secure-worker";
      },
      15s);
  ::kill(worker_pid, SIGTERM);
  int status = 0;
  if (!WaitFor([&] { return ::waitpid(worker_pid, &status, WNOHANG) == worker_pid; }, 15s)) {
    ::kill(worker_pid, SIGKILL);
    ::waitpid(worker_pid, &status, 0);
  }
  std::ifstream wl(dir / "worker.log");
  std::stringstream worker_log;
  worker_log << wl.rdbuf();
  EXPECT_TRUE(registered) << worker_log.str();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << worker_log.str();
}

}  // namespace
}  // namespace despool::security_testing

namespace despool::security_testing {
namespace {

// scripts/despool.py (Debian's /usr/bin/python3 with python3-zmq) with and without key files.
TEST_F(SecureBroker, PythonClientUsesItsKeyFiles) {
  const char* src = std::getenv("DESPOOL_SOURCE_DIR");
  ASSERT_NE(src, nullptr);
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "no /usr/bin/python3";
  std::string out;
  if (RunProgram({"/usr/bin/python3", "-c", "import zmq, msgpack"}, &out) != 0) GTEST_SKIP() << out;
  ASSERT_EQ(RunProgram({BinDir() + "/despoolctl", "keygen", "--out", dir / "py"}, &out), 0) << out;
  std::ofstream(ring.AuthorizedDir() + "/py.toml")
      << "public = \"" << out.substr(0, kZ85KeyLength) << "\"\nrole = \"publisher\"\ndps = [\"a\"]\npackages = [\"office*\"]\n";
  StartBroker();
  const std::vector<std::string> py = {"/usr/bin/python3", std::string(src) + "/scripts/despool.py", "--broker",
                                       broker->frontend, "--events", broker->events, "--timeout", "2s"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> a = py;
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  const std::vector<std::string> keys = {"--curve-server-key", ring.PublicKeyPath(), "--curve-key", dir / "py.key"};
  auto submit = [&](std::vector<std::string> k, const char* dp) {
    k.insert(k.end(), {"submit", "--package", "office1", "--version", "1", "--source", "/srv/office1", "--dp", dp});
    return with(k);
  };
  EXPECT_EQ(RunProgram(submit(keys, "a"), &out), 0) << out;
  EXPECT_NE(out.find("\ta"), std::string::npos) << out;
  EXPECT_EQ(RunProgram(submit(keys, "b1"), &out), 1) << out;  // outside the grant
  EXPECT_NE(out.find("not-authorized"), std::string::npos) << out;
  EXPECT_EQ(RunProgram(submit({}, "a"), &out), 1) << out;  // no keys: no answer within --timeout
  EXPECT_EQ(JobCount(), 1u);
  ASSERT_EQ(::chmod((dir / "py.key").c_str(), 0644), 0);
  EXPECT_EQ(RunProgram(submit(keys, "a"), &out), 2) << out;
  EXPECT_NE(out.find("chmod 600"), std::string::npos) << out;
}

}  // namespace
}  // namespace despool::security_testing
