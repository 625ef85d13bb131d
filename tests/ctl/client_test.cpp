// The client library against a scripted broker: request/reply matching, timeouts, error
// replies, and the event follower's replay + de-duplication.
#include <gtest/gtest.h>

#include <chrono>
#include <zmq.hpp>

#include "ctl/fake_broker.h"
#include "despool/ctl/client.h"

namespace despool::ctl {
namespace {

using despool::testing::FakeBroker;
using despool::testing::MakeJob;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// An endpoint nobody listens on: bind an ephemeral port, read it back, close it.
std::string DeadEndpoint() {
  zmq::context_t ctx(1);
  zmq::socket_t s(ctx, zmq::socket_type::router);
  s.set(zmq::sockopt::linger, 0);
  s.bind("tcp://127.0.0.1:*");
  return s.get(zmq::sockopt::last_endpoint);
}

TEST(ClientTest, StatusRoundTripCarriesFiltersAndJobs) {
  FakeBroker broker([](const msg::Envelope& req, FakeBroker&) -> std::optional<msg::Body> {
    if (std::holds_alternative<msg::StatusRequest>(req.body)) {
      return msg::JobsReply{{MakeJob("j1", "lab1", "app", 3, msg::JobState::kQueued)}};
    }
    return std::nullopt;
  });
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  msg::StatusRequest req;
  req.dp = "lab1";
  req.state = msg::JobState::kQueued;
  req.limit = 0;
  auto r = client.Status(req, milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id, "j1");
  auto reqs = broker.requests();
  ASSERT_EQ(reqs.size(), 1u);
  const auto& sent = std::get<msg::StatusRequest>(reqs[0].body);
  EXPECT_EQ(sent.dp, std::optional<std::string>("lab1"));
  EXPECT_EQ(sent.state, std::optional<msg::JobState>(msg::JobState::kQueued));
  EXPECT_EQ(sent.limit, 0u);
  EXPECT_NE(reqs[0].request_id, 0u);
}

TEST(ClientTest, ErrorReplyBecomesErrorWithBrokersMessage) {
  FakeBroker broker;
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  msg::StatusRequest req;
  req.job_id = "no-such-job";
  auto r = client.Status(req, milliseconds(5000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  EXPECT_NE(r.error().message.find("unknown job 'no-such-job'"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("not-found"), std::string::npos);
}

TEST(ClientTest, UnreachableBrokerIsUnavailableWithinTheTimeoutNamingTheEndpoint) {
  const std::string endpoint = DeadEndpoint();
  Client client;
  ASSERT_TRUE(client.Connect(endpoint).ok());
  const auto start = Clock::now();
  auto r = client.Stats(milliseconds(300));
  const auto took = Clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_NE(r.error().message.find(endpoint), std::string::npos) << r.error().message;
  EXPECT_GE(took, milliseconds(300));
  EXPECT_LT(took, milliseconds(3000));
}

TEST(ClientTest, SilentBrokerTimesOutAndALateReplyNeverAnswersTheNextRequest) {
  // The first stats request is never answered; the broker answers the next one, first sending
  // the late reply to the first requester (whose socket the client replaced).
  FakeBroker broker([](const msg::Envelope& req, FakeBroker&) -> std::optional<msg::Body> {
    if (std::holds_alternative<msg::StatsRequest>(req.body)) {
      if (req.request_id == 1) return std::nullopt;
      msg::StatsReply s;
      s.workers = 7;
      return s;
    }
    return std::nullopt;
  });
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  auto first = client.Stats(milliseconds(200));
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.error().code, ErrorCode::kUnavailable);
  auto second = client.Stats(milliseconds(5000));
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_EQ(second->workers, 7u);
}

TEST(ClientTest, StaleReplyWithAnotherIdIsIgnored) {
  FakeBroker broker([](const msg::Envelope&, FakeBroker&) -> std::optional<msg::Body> {
    msg::StatsReply s;
    s.workers = 3;
    return s;
  });
  broker.set_stale_reply_before_next(true);
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  auto r = client.Stats(milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.error().message;  // the stale "internal" error reply was skipped
  EXPECT_EQ(r->workers, 3u);
}

TEST(ClientTest, MalformedEndpointIsAnError) {
  Client client;
  auto s = client.Connect("nonsense://x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("nonsense://x"), std::string::npos);
}

TEST(ClientTest, RawRequestGetsTheBrokersErrorForGarbage) {
  FakeBroker broker;
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  auto r = client.RequestRaw("\xc1 not msgpack", milliseconds(5000));
  ASSERT_TRUE(r.ok()) << r.error().message;
  auto decoded = msg::Decode(std::string_view(*r));
  ASSERT_TRUE(decoded.ok());
  EXPECT_TRUE(std::holds_alternative<msg::ErrorReply>(decoded.value().body));
}

TEST(TopicPrefixTest, EndsEveryPartWithASlash) {
  EXPECT_EQ(TopicPrefix(std::nullopt, std::nullopt), "dp/");
  EXPECT_EQ(TopicPrefix(std::string("a"), std::nullopt), "dp/a/");
  EXPECT_EQ(TopicPrefix(std::string("a"), std::string("p")), "dp/a/pkg/p/");
  EXPECT_EQ(TopicPrefix(std::nullopt, std::string("p")), "dp/");
}

// Collects events until `n` arrived or the deadline passed.
std::vector<msg::Event> Collect(EventFollower& f, std::size_t n, milliseconds within) {
  std::vector<msg::Event> got;
  const auto deadline = Clock::now() + within;
  while (got.size() < n && Clock::now() < deadline) {
    auto e = f.Next(milliseconds(100));
    if (!e.ok()) {
      ADD_FAILURE() << e.error().message;
      break;
    }
    if (e->has_value()) got.push_back(**e);
  }
  return got;
}

TEST(EventFollowerTest, ReplaysStoredEventsThenLiveOnesWithoutDuplicates) {
  FakeBroker broker;
  // Stored before the follower exists (never seen live by it).
  broker.Emit(MakeJob("j1", "a", "app", 1, msg::JobState::kQueued, 1));
  broker.Emit(MakeJob("j1", "a", "app", 1, msg::JobState::kRunning, 2));
  broker.Emit(MakeJob("j2", "ab", "app", 1, msg::JobState::kQueued, 3));  // other DP
  broker.Emit(MakeJob("j1", "a", "app", 1, msg::JobState::kDeferred, 4));
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  FollowOptions fo;
  fo.events_endpoint = broker.events();
  fo.dp = "a";
  fo.since = 1;
  EventFollower follower(client, fo);
  ASSERT_TRUE(follower.Start().ok());

  auto replay = Collect(follower, 2, milliseconds(5000));
  ASSERT_EQ(replay.size(), 2u);
  EXPECT_EQ(replay[0].seq, 2u);
  EXPECT_EQ(replay[0].job.state, msg::JobState::kRunning);
  EXPECT_EQ(replay[1].seq, 4u);

  // Live: keep publishing until one arrives (the subscription may still be connecting), then
  // every state event must arrive exactly once, in seq order, and DP "ab" never.
  std::vector<msg::Event> live;
  const auto deadline = Clock::now() + milliseconds(10000);
  std::int64_t t = 5;
  while (Clock::now() < deadline) {
    broker.Emit(MakeJob("j1", "a", "app", 1, msg::JobState::kRunning, t++));
    broker.Emit(MakeJob("j3", "ab", "app", 1, msg::JobState::kRunning, t++));
    auto e = follower.Next(milliseconds(200));
    ASSERT_TRUE(e.ok());
    if (e->has_value()) {
      live.push_back(**e);
      break;
    }
  }
  ASSERT_FALSE(live.empty()) << "no live event arrived";
  broker.Emit(MakeJob("j1", "a", "app", 1, msg::JobState::kApplied, t++));
  // Drain everything until the applied one (inclusive).
  while (live.back().job.state != msg::JobState::kApplied && Clock::now() < deadline) {
    auto more = Collect(follower, 1, milliseconds(2000));
    if (more.empty()) break;
    live.push_back(more[0]);
  }
  ASSERT_EQ(live.back().job.state, msg::JobState::kApplied);
  std::uint64_t prev = 4;
  for (const auto& e : live) {
    EXPECT_EQ(e.job.dp, "a");
    EXPECT_GT(e.seq, prev) << "duplicate or out-of-order seq";
    prev = e.seq;
  }
  EXPECT_EQ(follower.last_seq(), live.back().seq);
}

TEST(EventFollowerTest, EventsStoredButNeverPublishedAreFetched) {
  // The slow joiner case: the broker stored and published events before the SUB connection
  // was live; the follower must still deliver them (from the store), once.
  FakeBroker broker;
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  FollowOptions fo;
  fo.events_endpoint = broker.events();
  fo.resync_interval = milliseconds(200);
  EventFollower follower(client, fo);
  ASSERT_TRUE(follower.Start().ok());
  broker.Emit(MakeJob("j1", "a", "app", 1, msg::JobState::kApplied, 9), /*store=*/true, /*publish=*/false);
  auto got = Collect(follower, 1, milliseconds(5000));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].job.id, "j1");
  EXPECT_EQ(got[0].seq, 1u);
  auto none = Collect(follower, 1, milliseconds(500));
  EXPECT_TRUE(none.empty());
}

TEST(EventFollowerTest, WithoutSinceStartsAfterTheNewestStoredEvent) {
  FakeBroker broker;
  broker.Emit(MakeJob("old", "a", "app", 1, msg::JobState::kApplied, 1), true, false);
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  FollowOptions fo;
  fo.events_endpoint = broker.events();
  fo.resync_interval = milliseconds(100);
  EventFollower follower(client, fo);
  ASSERT_TRUE(follower.Start().ok());
  EXPECT_EQ(follower.last_seq(), 1u);
  broker.Emit(MakeJob("new", "a", "app", 2, msg::JobState::kQueued, 2), true, false);
  auto got = Collect(follower, 1, milliseconds(5000));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].job.id, "new");
}

TEST(EventFollowerTest, SinceOlderThanRetentionNamesTheOldestAvailable) {
  FakeBroker broker;
  for (int i = 0; i < 5; ++i) broker.Emit(MakeJob("j", "a", "app", 1, msg::JobState::kQueued, i), true, false);
  broker.SetOldestSeq(4);
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  FollowOptions fo;
  fo.events_endpoint = broker.events();
  fo.since = 1;
  EventFollower follower(client, fo);
  auto s = follower.Start();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(s.error().message.find("oldest available is seq 4"), std::string::npos) << s.error().message;

  FollowOptions ok = fo;
  ok.since = 3;  // seq 4 onwards is all there: fine
  EventFollower follower2(client, ok);
  EXPECT_TRUE(follower2.Start().ok());
}

TEST(EventFollowerTest, ProgressEventsAreDeliveredLive) {
  FakeBroker broker;
  Client client;
  ASSERT_TRUE(client.Connect(broker.frontend()).ok());
  FollowOptions fo;
  fo.events_endpoint = broker.events();
  fo.dp = "a";
  EventFollower follower(client, fo);
  ASSERT_TRUE(follower.Start().ok());
  const auto job = MakeJob("j1", "a", "app", 1, msg::JobState::kRunning);
  const auto deadline = Clock::now() + milliseconds(10000);
  bool got = false;
  while (!got && Clock::now() < deadline) {
    broker.EmitProgress(job, msg::Progress{1, 10, 100, 1000});
    auto e = follower.Next(milliseconds(100));
    ASSERT_TRUE(e.ok());
    if (e->has_value()) {
      EXPECT_EQ((*e)->kind, msg::EventKind::kProgress);
      ASSERT_TRUE((*e)->progress.has_value());
      EXPECT_EQ((*e)->progress->files_total, 10u);
      got = true;
    }
  }
  EXPECT_TRUE(got);
}

}  // namespace
}  // namespace despool::ctl
