// Key files, authorized keys, authorization decisions, bind policy and the rate limiter
// (no processes).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include "despool/broker/auth.h"
#include "security/security_harness.h"

namespace despool::security_testing {
namespace {

mode_t ModeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST(CurveKeys, KeygenWritesSecretOnlyForTheOwner) {
  TempDir dir;
  const CurveKeyPair pair = NewPair();
  ASSERT_TRUE(IsZ85Key(pair.public_key));
  ASSERT_TRUE(IsZ85Key(pair.secret_key));
  ASSERT_NE(pair.public_key, pair.secret_key);
  const mode_t old_umask = ::umask(0);  // even a permissive umask must not widen the secret
  Status st = WriteCurveKeyFiles(dir / "client", pair);
  ::umask(old_umask);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(ModeOf(dir / "client.key"), 0600u);
  EXPECT_EQ(ModeOf(dir / "client.pub"), 0644u);
  auto loaded = LoadSecretKeyFile(dir / "client.key");
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->secret_key, pair.secret_key);
  EXPECT_EQ(loaded->public_key, pair.public_key);
  auto pub = LoadPublicKeyFile(dir / "client.pub");
  ASSERT_TRUE(pub.ok()) << pub.error().message;
  EXPECT_EQ(*pub, pair.public_key);
  // Never replaced by accident.
  Status again = WriteCurveKeyFiles(dir / "client", NewPair());
  EXPECT_FALSE(again.ok());
  EXPECT_EQ(LoadSecretKeyFile(dir / "client.key")->secret_key, pair.secret_key);
}

TEST(CurveKeys, GroupOrWorldReadableSecretIsRefused) {
  TempDir dir;
  ASSERT_TRUE(WriteCurveKeyFiles(dir / "broker", NewPair()).ok());
  for (mode_t mode : {0644, 0640, 0604, 0660}) {
    ASSERT_EQ(::chmod((dir / "broker.key").c_str(), mode), 0);
    auto loaded = LoadSecretKeyFile(dir / "broker.key");
    ASSERT_FALSE(loaded.ok()) << std::oct << mode;
    EXPECT_NE(loaded.error().message.find("chmod 600"), std::string::npos) << loaded.error().message;
  }
  ASSERT_EQ(::chmod((dir / "broker.key").c_str(), 0400), 0);
  EXPECT_TRUE(LoadSecretKeyFile(dir / "broker.key").ok());
}

TEST(CurveKeys, MalformedKeysAreRefused) {
  TempDir dir;
  EXPECT_FALSE(IsZ85Key("short"));
  EXPECT_FALSE(IsZ85Key(std::string(40, '"')));
  std::ofstream(dir / "bad.key") << "secret = \"not-a-key\"\n";
  ::chmod((dir / "bad.key").c_str(), 0600);
  EXPECT_FALSE(LoadSecretKeyFile(dir / "bad.key").ok());
  // A public key that does not belong to the secret.
  const CurveKeyPair a = NewPair(), b = NewPair();
  std::ofstream(dir / "mixed.key") << "public = \"" << b.public_key << "\"\nsecret = \"" << a.secret_key << "\"\n";
  ::chmod((dir / "mixed.key").c_str(), 0600);
  auto mixed = LoadSecretKeyFile(dir / "mixed.key");
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.error().message.find("does not belong"), std::string::npos);
  // Client config needs both files.
  EXPECT_FALSE(LoadCurveClientConfig(dir / "x.pub", "").ok());
  auto none = LoadCurveClientConfig("", "");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->enabled());
}

TEST(AuthorizedKeys, RolesGrantsDuplicatesAndRevocation) {
  TempDir dir;
  KeyRing ring(dir);
  const auto pub = ring.Authorize("pub1", "publisher", "dps = [\"a\", \"b*\"]\npackages = [\"office*\"]");
  ring.Authorize("sub1", "subscriber");
  ring.Authorize("w1", "worker", "dps = [\"a\"]");
  auto keys = LoadAuthorizedKeys(ring.AuthorizedDir(), {});
  ASSERT_TRUE(keys.ok()) << keys.error().message;
  ASSERT_EQ(keys->size(), 3u);
  EXPECT_EQ((*keys)[0].id, "pub1");
  EXPECT_EQ((*keys)[0].role, Role::kPublisher);
  EXPECT_EQ((*keys)[0].public_key, pub.public_key);
  // Revoked by id or by public key: skipped.
  auto revoked = LoadAuthorizedKeys(ring.AuthorizedDir(), {"sub1", pub.public_key});
  ASSERT_TRUE(revoked.ok());
  ASSERT_EQ(revoked->size(), 1u);
  EXPECT_EQ((*revoked)[0].id, "w1");

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"role = \"root\"", "unknown role"},
      {"role = \"publisher\"\ndps = [\"a\"]", "packages"},
      {"role = \"publisher\"\npackages = [\"*\"]", "dps"},
      {"role = \"worker\"", "dps"},
      {"role = \"subscriber\"\ndps = [\"a\"]", "no grants"},
      {"role = \"admin\"\nsecret = \"x\"", "unknown key"},
  };
  for (const auto& [body, expected] : bad) {
    TempDir d2;
    std::ofstream(d2 / "k.toml") << "public = \"" << NewPair().public_key << "\"\n" << body << "\n";
    auto r = LoadAuthorizedKeys(d2.path(), {});
    ASSERT_FALSE(r.ok()) << body;
    EXPECT_NE(r.error().message.find(expected), std::string::npos) << r.error().message;
  }
  // The same public key twice.
  std::ofstream(ring.AuthorizedDir() + "/dup.toml") << "public = \"" << pub.public_key << "\"\nrole = \"admin\"\n";
  auto dup = LoadAuthorizedKeys(ring.AuthorizedDir(), {});
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.error().message.find("twice"), std::string::npos);
}

TEST(BindPolicy, OnlyLoopbackAndIpcWithoutCurve) {
  using broker::CheckBindPolicy;
  using broker::IsLocalEndpoint;
  for (const char* ep : {"tcp://127.0.0.1:7400", "tcp://127.1.2.3:*", "tcp://localhost:1", "tcp://[::1]:7400",
                         "ipc:///tmp/x", "inproc://a"}) {
    EXPECT_TRUE(IsLocalEndpoint(ep)) << ep;
  }
  for (const char* ep : {"tcp://0.0.0.0:7400", "tcp://*:7400", "tcp://10.0.0.1:7400", "tcp://eth0:7400",
                         "tcp://[::]:7400", "tcp://128.0.0.1:1", "tcp://127.0.0.1.evil:1", "pgm://x", "ws://a:1"}) {
    EXPECT_FALSE(IsLocalEndpoint(ep)) << ep;
  }
  const std::vector<std::string> eps = {"tcp://127.0.0.1:7400", "tcp://0.0.0.0:7401"};
  auto refused = CheckBindPolicy(eps, false, false);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("tcp://0.0.0.0:7401"), std::string::npos);
  EXPECT_NE(refused.error().message.find("--insecure"), std::string::npos);
  auto insecure = CheckBindPolicy(eps, false, true);
  ASSERT_TRUE(insecure.ok());
  EXPECT_EQ(*insecure, std::vector<std::string>{"tcp://0.0.0.0:7401"});  // warned about
  auto curve = CheckBindPolicy(eps, true, false);
  ASSERT_TRUE(curve.ok());
  EXPECT_TRUE(curve->empty());
}

msg::SubmitRequest SubmitOf(std::string package, std::vector<std::string> dps, std::vector<std::string> groups = {}) {
  msg::Instruction in;
  in.package = std::move(package);
  in.version = 1;
  in.source = "/srv/x";
  in.dps = std::move(dps);
  in.dp_groups = std::move(groups);
  msg::SubmitRequest r;
  r.instructions.push_back(std::move(in));
  return r;
}

TEST(Authorization, PublisherGrantSubscriberReadOnlyAdminAll) {
  using broker::AuthorizeBackend;
  using broker::AuthorizeFrontend;
  const broker::DpGroups groups = {{"offices", {"b1", "b2"}}, {"mixed", {"b1", "c"}}, {"hq", {"hq1"}}};
  KeyGrant pub{"alice", Role::kPublisher, "", {"a", "b*"}, {"hq"}, {"office*"}};
  EXPECT_FALSE(AuthorizeFrontend(pub, SubmitOf("office-2024", {"a", "b7"}), groups));
  EXPECT_FALSE(AuthorizeFrontend(pub, SubmitOf("office", {}, {"offices", "hq"}), groups));  // members / named
  auto pkg = AuthorizeFrontend(pub, SubmitOf("payroll", {"a"}), groups);
  ASSERT_TRUE(pkg);
  EXPECT_NE(pkg->find("package 'payroll'"), std::string::npos) << *pkg;
  EXPECT_NE(pkg->find("key 'alice'"), std::string::npos) << *pkg;
  auto dp = AuthorizeFrontend(pub, SubmitOf("office", {"a", "c"}), groups);
  ASSERT_TRUE(dp);
  EXPECT_NE(dp->find("DP 'c'"), std::string::npos) << *dp;
  auto grp = AuthorizeFrontend(pub, SubmitOf("office", {}, {"mixed"}), groups);
  ASSERT_TRUE(grp);
  EXPECT_NE(grp->find("DP group 'mixed'"), std::string::npos) << *grp;
  EXPECT_TRUE(AuthorizeFrontend(pub, SubmitOf("office", {}, {"unknown-group"}), groups));
  EXPECT_TRUE(AuthorizeFrontend(pub, msg::RetryRequest{"j1"}, groups));
  EXPECT_TRUE(AuthorizeFrontend(pub, msg::CancelRequest{"j1"}, groups));
  EXPECT_FALSE(AuthorizeFrontend(pub, msg::StatusRequest{}, groups));
  EXPECT_FALSE(AuthorizeFrontend(pub, msg::VerifyRequest{"a", std::string("office1"), false}, groups));
  EXPECT_TRUE(AuthorizeFrontend(pub, msg::VerifyRequest{"a", std::nullopt, false}, groups));  // every package
  EXPECT_TRUE(AuthorizeFrontend(pub, msg::VerifyRequest{"z", std::string("office1"), false}, groups));

  KeyGrant sub{"s", Role::kSubscriber, "", {}, {}, {}};
  EXPECT_FALSE(AuthorizeFrontend(sub, msg::StatsRequest{}, groups));
  EXPECT_FALSE(AuthorizeFrontend(sub, msg::EventsSinceRequest{}, groups));
  auto ro = AuthorizeFrontend(sub, SubmitOf("office", {"a"}), groups);
  ASSERT_TRUE(ro);
  EXPECT_NE(ro->find("read-only"), std::string::npos);

  KeyGrant admin{"root", Role::kAdmin, "", {}, {}, {}};
  EXPECT_FALSE(AuthorizeFrontend(admin, SubmitOf("anything", {"anywhere"}), groups));
  EXPECT_FALSE(AuthorizeFrontend(admin, msg::RetryRequest{"j1"}, groups));
  EXPECT_FALSE(AuthorizeBackend(admin, msg::Register{"w", {"x"}, 1}));

  KeyGrant worker{"w1", Role::kWorker, "", {"a", "b*"}, {}, {}};
  EXPECT_FALSE(AuthorizeBackend(worker, msg::Register{"w", {"a", "b2"}, 1}));
  auto reg = AuthorizeBackend(worker, msg::Register{"w", {"a", "c"}, 1});
  ASSERT_TRUE(reg);
  EXPECT_NE(reg->find("DP 'c'"), std::string::npos);
  EXPECT_TRUE(AuthorizeFrontend(worker, msg::StatusRequest{}, groups));
  EXPECT_TRUE(AuthorizeBackend(pub, msg::Register{"w", {"a"}, 1}));
  EXPECT_FALSE(broker::RoleAllowedInDomain(Role::kWorker, broker::kZapDomainFrontend));
  EXPECT_FALSE(broker::RoleAllowedInDomain(Role::kPublisher, broker::kZapDomainBackend));
  EXPECT_TRUE(broker::RoleAllowedInDomain(Role::kSubscriber, broker::kZapDomainEvents));
}

TEST(RateLimiter, TokenBucketPerConnection) {
  broker::RateLimiter off(0, 10);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(off.Allow("p", 0));
  broker::RateLimiter rl(10, 3);  // 10/s, bursts of 3
  EXPECT_TRUE(rl.Allow("a", 1000));
  EXPECT_TRUE(rl.Allow("a", 1000));
  EXPECT_TRUE(rl.Allow("a", 1000));
  EXPECT_FALSE(rl.Allow("a", 1000));
  EXPECT_TRUE(rl.Allow("b", 1000));  // another connection has its own bucket
  EXPECT_FALSE(rl.Allow("a", 1050));
  EXPECT_TRUE(rl.Allow("a", 1100));  // one token per 100 ms
  EXPECT_FALSE(rl.Allow("a", 1100));
  // Idle buckets are forgotten.
  for (int i = 0; i < 100; ++i) rl.Allow("peer" + std::to_string(i), 2000);
  rl.Allow("late", 60'000);
  EXPECT_LE(rl.tracked(), 2u);
}

}  // namespace
}  // namespace despool::security_testing
