// In-process harness for the broker Core: an in-memory SQLite store, a fake clock, and helpers
// that play workers and clients by calling the Core directly (no sockets).
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "despool/broker/core.h"
#include "despool/broker/store.h"

namespace despool::broker::testing {

class CoreHarness {
 public:
  explicit CoreHarness(CoreOptions options = DefaultOptions(), std::string path = ":memory:")
      : options_(std::move(options)), path_(std::move(path)) {
    auto s = OpenSqliteStore(path_, {});
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    store_ = std::move(s).value();
    Restart();
  }

  static CoreOptions DefaultOptions() {
    CoreOptions o;
    o.dps = {"dp1", "dp2"};
    o.dp_groups["both"] = {"dp1", "dp2"};
    o.heartbeat_interval_ms = 1000;
    o.liveness = 3;
    o.rng_seed = 42;
    return o;
  }

  // A new Core over the same store, as after a broker restart.
  void Restart() {
    core_ = std::make_unique<Core>(options_, store_.get());
    // As the broker does: active jobs streamed into the Core (deferred ones light).
    auto loaded = store_->Load([this](JobRecord&& r) { core_->RecoverJob(std::move(r), now); });
    ASSERT_TRUE(loaded.ok());
    core_->Recover(std::move(loaded.value()), now);
    Commit();
  }

  Core& core() { return *core_; }
  Store& store() { return *store_; }

  // One poll round: timers, dispatch, commit; collects what would go out.
  void Round() {
    core_->Tick(now);
    Commit();
  }

  void Commit() {
    WriteBatch batch = core_->TakeBatch();
    Status st = store_->Commit(batch);
    ASSERT_TRUE(st.ok()) << st.ToString();
    for (auto& e : batch.events) events.push_back(std::move(e));
    for (auto& m : core_->TakeWorkerOutbox()) sent.push_back(std::move(m));
    for (auto& e : core_->TakeEvents()) events.push_back(std::move(e));
  }

  void Advance(std::int64_t ms) { now += ms; }

  msg::Instruction Refresh(const std::string& package, std::uint64_t version, std::vector<std::string> dps,
                           msg::RetryPolicy policy = {}) {
    msg::Instruction in;
    in.package = package;
    in.version = version;
    in.source = "/src/" + package + "/" + std::to_string(version);
    in.dps = std::move(dps);
    in.policy = policy;
    return in;
  }

  // Submits one instruction and returns the job ids (fails the test on an error reply).
  std::vector<std::string> Submit(const msg::Instruction& in) {
    msg::SubmitRequest req;
    req.instructions.push_back(in);
    msg::Body reply = core_->Submit(req, now);
    Commit();
    std::vector<std::string> ids;
    if (auto* r = std::get_if<msg::SubmitReply>(&reply)) {
      for (const auto& j : r->jobs) ids.push_back(j.id);
    } else {
      ADD_FAILURE() << "submit failed: " << std::get<msg::ErrorReply>(reply).message;
    }
    return ids;
  }

  void Register(const std::string& peer, std::vector<std::string> dps, std::uint32_t capacity) {
    core_->OnWorkerMessage(peer, msg::Register{peer + "-name", std::move(dps), capacity}, now);
    Commit();
  }

  void Heartbeat(const std::string& peer) {
    core_->OnWorkerMessage(peer, msg::Heartbeat{}, now);
    Commit();
  }

  // Sets the clock to `at`, then a heartbeat from `peer` and a round: the timers run at `at`.
  void AdvanceTo(std::int64_t at, const std::string& peer) {
    now = at;
    Heartbeat(peer);
    Round();
  }

  void Result(const std::string& peer, const std::string& job, std::uint64_t attempt, msg::Outcome outcome,
              std::vector<std::string> in_use = {}, std::optional<std::string> error = {}) {
    msg::JobResult r;
    r.job_id = job;
    r.attempt = attempt;
    r.outcome = outcome;
    r.in_use = std::move(in_use);
    r.error = std::move(error);
    core_->OnWorkerMessage(peer, r, now);
    Commit();
  }

  // Dispatches sent so far to `peer` (removed from `sent`).
  std::vector<msg::Dispatch> TakeDispatches(const std::string& peer) {
    std::vector<msg::Dispatch> out;
    std::vector<ToWorker> rest;
    for (auto& m : sent) {
      if (m.peer == peer && std::holds_alternative<msg::Dispatch>(m.body)) {
        out.push_back(std::get<msg::Dispatch>(m.body));
      } else {
        rest.push_back(std::move(m));
      }
    }
    sent = std::move(rest);
    return out;
  }

  template <typename T>
  std::vector<T> Sent(const std::string& peer) const {
    std::vector<T> out;
    for (const auto& m : sent) {
      if (m.peer == peer && std::holds_alternative<T>(m.body)) out.push_back(std::get<T>(m.body));
    }
    return out;
  }

  // The job as stored (the store is the source of truth after each commit).
  msg::JobInfo Job(const std::string& id) {
    auto r = store_->GetJob(id);
    EXPECT_TRUE(r.ok());
    if (!r.ok() || !*r) {
      ADD_FAILURE() << "no job " << id;
      return {};
    }
    return (*r)->info;
  }
  JobRecord Record(const std::string& id) {
    auto r = store_->GetJob(id);
    return r.ok() && *r ? **r : JobRecord{};
  }

  std::int64_t now = 1'700'000'000'000;
  std::vector<ToWorker> sent;
  std::vector<msg::Event> events;

 private:
  CoreOptions options_;
  std::string path_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Core> core_;
};

}  // namespace despool::broker::testing
