// The SQLite store: schema migrations, round trips, restart state, event retention.
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "despool/broker/store.h"

namespace despool::broker {
namespace {

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/store_test_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    path_ = dir_ + "/nested/dir/broker.db";  // parent directories are created
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<Store> Open(SqliteOptions o = {}) {
    auto s = OpenSqliteStore(path_, o);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    return s.ok() ? std::move(s).value() : nullptr;
  }

  // Runs one SQL statement on the database behind the store's back.
  std::string Sql(const std::string& sql) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    std::string out;
    char* err = nullptr;
    sqlite3_exec(
        db, sql.c_str(),
        [](void* o, int n, char** vals, char**) {
          auto* s = static_cast<std::string*>(o);
          for (int i = 0; i < n; ++i) *s += std::string(vals[i] ? vals[i] : "NULL") + (i + 1 < n ? "|" : "\n");
          return 0;
        },
        &out, &err);
    if (err) {
      ADD_FAILURE() << err;
      sqlite3_free(err);
    }
    sqlite3_close(db);
    return out;
  }

  static JobRecord FullJob(const std::string& id, std::uint64_t seq) {
    JobRecord r;
    r.seq = seq;
    r.info.id = id;
    r.info.kind = msg::JobKind::kRefresh;
    r.info.package = "pkg";
    r.info.version = (std::uint64_t{1} << 53) - 1;
    r.info.dp = "dp1";
    r.info.source = "/src/pkg";
    r.info.state = msg::JobState::kDeferred;
    r.info.attempts = 3;
    r.info.max_attempts = 9;
    r.info.next_attempt_at_ms = 1234567;
    r.info.last_error = "3 file(s) in use";
    r.info.in_use = {"a/b", "c d"};
    r.info.holders = {{42, "smbd", "a/b"}};
    r.info.worker = "w1";
    r.info.created_at_ms = 100;
    r.info.updated_at_ms = 200;
    r.info.report = msg::VerifyReport{{"m"}, {"e"}, {"c"}};
    r.info.stats = msg::ApplyStats{1, 2, 3, 4, 5, 6, 7};
    r.policy = {1000, 8000, 9, msg::OnExhausted::kForce};
    r.checksum = true;
    r.attempt_token = 5;
    r.force_next = true;
    r.cancel_reason = CancelReason::kSuperseded;
    r.released_step = 2;
    r.started_at_ms = 150;
    return r;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(StoreTest, MigratesOnceAndRefusesANewerSchema) {
  { auto s = Open(); }
  EXPECT_EQ(Sql("SELECT version FROM schema_migrations"), "1\n");
  EXPECT_EQ(Sql("PRAGMA journal_mode"), "wal\n");
  { auto s = Open(); }  // reopening applies nothing twice
  EXPECT_EQ(Sql("SELECT COUNT(*) FROM schema_migrations"), "1\n");
  Sql("INSERT INTO schema_migrations(version, applied_at) VALUES(99, 0)");
  auto s = OpenSqliteStore(path_, {});
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("newer"), std::string::npos);
}

TEST_F(StoreTest, SynchronousFullByDefault) {
  auto s = Open();
  bool found = false;
  for (const auto& line : s->Describe()) {
    if (line.rfind("synchronous", 0) == 0) {
      EXPECT_EQ(line, "synchronous = FULL");
      found = true;
    }
  }
  EXPECT_TRUE(found);
  SqliteOptions normal;
  normal.sync = SyncMode::kNormal;
  auto n = OpenSqliteStore(dir_ + "/other.db", normal);
  ASSERT_TRUE(n.ok());
  bool saw_normal = false;
  for (const auto& line : (*n)->Describe()) saw_normal |= line == "synchronous = NORMAL";
  EXPECT_TRUE(saw_normal);
}

TEST_F(StoreTest, JobsRoundTripAndActiveOnesLoadAfterReopen) {
  const JobRecord full = FullJob("s-1", 1);
  {
    auto s = Open();
    WriteBatch b;
    b.jobs[full.info.id] = full;
    JobRecord done = FullJob("s-2", 2);
    done.info.state = msg::JobState::kApplied;
    b.jobs[done.info.id] = done;
    b.next_job_seq = 3;
    b.new_dps = {"dp1", "dp9"};
    msg::Event e;
    e.seq = 1;
    e.at_ms = 5;
    e.job = full.info;
    b.events.push_back(e);
    AttemptRecord a;
    a.job_id = "s-1";
    a.attempt = 5;
    a.worker = "w1";
    a.outcome = "deferred";
    a.in_use = {"a/b"};
    b.attempts.push_back(a);
    ASSERT_TRUE(s->Commit(b).ok());
  }
  auto s = Open();
  auto loaded = s->Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->next_job_seq, 3u);
  EXPECT_EQ(loaded->last_event_seq, 1u);
  EXPECT_EQ(loaded->dps, (std::vector<std::string>{"dp1", "dp9"}));
  EXPECT_FALSE(loaded->store_id.empty());
  ASSERT_EQ(loaded->active_jobs.size(), 1u);  // applied jobs stay in the store only
  const JobRecord& r = loaded->active_jobs[0];
  EXPECT_EQ(r.info, full.info);
  EXPECT_EQ(r.seq, full.seq);
  EXPECT_EQ(r.policy.retry_base_ms, 1000u);
  EXPECT_EQ(r.policy.retry_max_ms, 8000u);
  EXPECT_EQ(r.policy.max_attempts, 9u);
  EXPECT_EQ(r.policy.on_exhausted, msg::OnExhausted::kForce);
  EXPECT_TRUE(r.checksum);
  EXPECT_EQ(r.attempt_token, 5u);
  EXPECT_TRUE(r.force_next);
  EXPECT_EQ(r.cancel_reason, CancelReason::kSuperseded);
  EXPECT_EQ(r.released_step, 2u);
  EXPECT_EQ(r.started_at_ms, 150);
  auto got = s->GetJob("s-2");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->info.state, msg::JobState::kApplied);
  auto hist = s->History("s-1");
  ASSERT_TRUE(hist.ok());
  ASSERT_EQ(hist->size(), 1u);
  EXPECT_EQ((*hist)[0].in_use, std::vector<std::string>{"a/b"});
  auto page = s->EventsSince(0, 10, std::nullopt, std::nullopt);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->events.size(), 1u);
  EXPECT_EQ(page->events[0].job, full.info);
  // An update of an existing job keeps its creation fields and changes the rest.
  JobRecord upd = full;
  upd.info.state = msg::JobState::kQueued;
  upd.info.next_attempt_at_ms.reset();
  upd.info.updated_at_ms = 300;
  WriteBatch b2;
  b2.jobs[upd.info.id] = upd;
  ASSERT_TRUE(s->Commit(b2).ok());
  auto again = s->GetJob("s-1");
  EXPECT_EQ((*again)->info, upd.info);
}

TEST_F(StoreTest, ListsNonTerminalFirstThenRecentTerminalWithFilters) {
  auto s = Open();
  WriteBatch b;
  for (int i = 1; i <= 6; ++i) {
    JobRecord r = FullJob("l-" + std::to_string(i), static_cast<std::uint64_t>(i));
    r.info.state = i % 2 ? msg::JobState::kQueued : msg::JobState::kApplied;
    r.info.dp = i <= 3 ? "x" : "y";
    r.info.updated_at_ms = i;
    b.jobs[r.info.id] = r;
  }
  ASSERT_TRUE(s->Commit(b).ok());
  JobFilter all;
  auto jobs = s->ListJobs(all);
  ASSERT_TRUE(jobs.ok());
  std::vector<std::string> ids;
  for (const auto& j : *jobs) ids.push_back(j.info.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"l-1", "l-3", "l-5", "l-6", "l-4", "l-2"}));
  JobFilter f;
  f.dp = "y";
  f.limit = 2;
  jobs = s->ListJobs(f);
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[0].info.id, "l-5");
  EXPECT_EQ((*jobs)[1].info.id, "l-6");
  JobFilter st;
  st.state = msg::JobState::kApplied;
  jobs = s->ListJobs(st);
  EXPECT_EQ(jobs->size(), 3u);
  auto counts = s->Counts();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->by_state[msg::JobState::kQueued], 3u);
  EXPECT_EQ(counts->by_state[msg::JobState::kApplied], 3u);
  EXPECT_EQ(counts->active_by_dp["x"][0], 2u);
  EXPECT_EQ(counts->active_by_dp["y"][0], 1u);
}

// Events for `count` seqs after `*seq`, in one batch.
WriteBatch EventBatch(std::uint64_t* seq, int count) {
  WriteBatch b;
  for (int i = 0; i < count; ++i) {
    msg::Event e;
    e.seq = ++*seq;
    e.job.id = "e-1";
    e.job.dp = "a";
    e.job.package = "p";
    e.job.source = "/src/p";
    b.events.push_back(e);
  }
  return b;
}

// Pruning runs inside each batch's transaction and takes a bounded slice, so a large backlog
// (here: the retention lowered across a restart) drains over several commits instead of one
// long delete on the ack path.
TEST_F(StoreTest, EventBacklogIsPrunedInBoundedSlicesPerCommit) {
  std::uint64_t seq = 0;
  {
    SqliteOptions wide;
    wide.events_retention = 100000;
    auto s = Open(wide);
    for (int round = 0; round < 30; ++round) ASSERT_TRUE(s->Commit(EventBatch(&seq, 100)).ok());
  }
  SqliteOptions narrow;
  narrow.events_retention = 100;
  auto s = Open(narrow);
  ASSERT_TRUE(s->Load().ok());
  std::uint64_t oldest = 1;
  int commits = 0;
  while (oldest + 100 + 10 < seq + 1) {
    ASSERT_TRUE(s->Commit(EventBatch(&seq, 10)).ok());
    auto page = s->EventsSince(0, 0, std::nullopt, std::nullopt);
    ASSERT_TRUE(page.ok()) << page.error().message;
    // Never more than 2 x 10 + 512 rows in one commit, and always some while over the window.
    EXPECT_GT(page->oldest_seq, oldest);
    EXPECT_LE(page->oldest_seq, oldest + 2 * 10 + 512);
    EXPECT_EQ(page->events.front().seq, page->oldest_seq);
    EXPECT_EQ(page->events.size(), seq - page->oldest_seq + 1);
    oldest = page->oldest_seq;
    ASSERT_LT(++commits, 20) << "the backlog does not drain";
  }
  EXPECT_GE(commits, 5);  // 3,000 rows at most 532 a commit
  EXPECT_EQ(seq - oldest + 1, 100u);
}

TEST_F(StoreTest, EventRetentionPrunesTheOldestAndSaysSo) {
  SqliteOptions o;
  o.events_retention = 100;
  auto s = Open(o);
  std::uint64_t seq = 0;
  for (int round = 0; round < 30; ++round) {
    WriteBatch b;
    for (int i = 0; i < 10; ++i) {
      msg::Event e;
      e.seq = ++seq;
      e.job.id = "e-1";
      e.job.dp = i % 2 ? "a" : "b";
      e.job.package = "p";
      e.job.source = "/src/p";
      b.events.push_back(e);
    }
    ASSERT_TRUE(s->Commit(b).ok());
  }
  auto page = s->EventsSince(0, 1000, std::nullopt, std::nullopt);
  ASSERT_TRUE(page.ok()) << page.error().message;
  EXPECT_EQ(page->last_seq, 300u);
  EXPECT_GT(page->oldest_seq, 1u);
  EXPECT_LE(page->oldest_seq, 300u - 100u + 1u);
  EXPECT_GE(page->events.size(), 100u);
  EXPECT_LE(page->events.size(), 111u);  // pruned in steps of 10% of the retention
  EXPECT_EQ(page->events.front().seq, page->oldest_seq);
  // A second connection (the broker's reader: pipelined queries and HTTP) reports the same
  // window though it never loaded or committed anything.
  auto reader = OpenSqliteStore(path_, o);
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  auto seen = (*reader)->EventsSince(0, 1000, std::nullopt, std::nullopt);
  ASSERT_TRUE(seen.ok()) << seen.error().message;
  EXPECT_EQ(seen->oldest_seq, page->oldest_seq);
  EXPECT_EQ(seen->last_seq, 300u);
  EXPECT_EQ(seen->events.size(), page->events.size());
  reader->reset();
  auto dp = s->EventsSince(290, 1000, std::string("a"), std::nullopt);
  ASSERT_TRUE(dp.ok());
  EXPECT_EQ(dp->events.size(), 5u);
  for (const auto& e : dp->events) EXPECT_EQ(e.job.dp, "a");
  // The watermark survives a reopen even when every event was pruned.
  s.reset();
  auto reopened = Open(o);
  auto loaded = reopened->Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->last_event_seq, 300u);
}

// Batches larger than one multi-row statement (32 rows): every row lands with its own values,
// inserts and in-place updates alike.
TEST_F(StoreTest, LargeBatchesRoundTripRowByRow) {
  auto s = Open();
  const int kJobs = 70;
  WriteBatch b;
  for (int i = 1; i <= kJobs; ++i) {
    JobRecord r = FullJob("s-" + std::to_string(i), static_cast<std::uint64_t>(i));
    r.info.package = "pkg" + std::to_string(i);
    r.info.attempts = static_cast<std::uint32_t>(i % 7);
    if (i % 3 == 0) {
      r.info.in_use.clear();
      r.info.holders.clear();
      r.info.report.reset();
      r.info.last_error.reset();
    }
    b.jobs[r.info.id] = r;
    AttemptRecord a;
    a.job_id = r.info.id;
    a.attempt = static_cast<std::uint64_t>(i);
    a.worker = std::string("w") + std::to_string(i);
    a.outcome = std::string("deferred");
    if (i % 2 == 0) a.in_use = {"x/" + std::to_string(i)};
    b.attempts.push_back(a);
    msg::Event e;
    e.seq = static_cast<std::uint64_t>(i);
    e.at_ms = 1000 + i;
    e.job = r.info;
    b.events.push_back(e);
  }
  ASSERT_TRUE(s->Commit(b).ok());
  // Update them all (more than one statement's worth again).
  WriteBatch u;
  for (int i = 1; i <= kJobs; ++i) {
    JobRecord r = b.jobs.at("s-" + std::to_string(i));
    r.info.state = msg::JobState::kApplied;
    r.info.updated_at_ms = 5000 + i;
    r.attempt_token = static_cast<std::uint64_t>(100 + i);
    u.jobs[r.info.id] = r;
  }
  ASSERT_TRUE(s->Commit(u).ok());
  s.reset();
  auto r = Open();
  for (int i = 1; i <= kJobs; ++i) {
    const std::string id = "s-" + std::to_string(i);
    auto got = r->GetJob(id);
    ASSERT_TRUE(got.ok() && got->has_value()) << id;
    const JobRecord& want = u.jobs.at(id);
    EXPECT_EQ((*got)->info.package, want.info.package);
    EXPECT_EQ((*got)->info.state, msg::JobState::kApplied);
    EXPECT_EQ((*got)->info.attempts, want.info.attempts);
    EXPECT_EQ((*got)->info.in_use, want.info.in_use);
    EXPECT_EQ((*got)->info.last_error, want.info.last_error);
    EXPECT_EQ((*got)->info.updated_at_ms, 5000 + i);
    EXPECT_EQ((*got)->attempt_token, static_cast<std::uint64_t>(100 + i));
    auto h = r->History(id);
    ASSERT_TRUE(h.ok());
    ASSERT_EQ(h->size(), 1u) << id;
    EXPECT_EQ(h->front().worker, "w" + std::to_string(i));
    EXPECT_EQ(h->front().in_use, b.attempts[static_cast<std::size_t>(i - 1)].in_use);
  }
  auto page = r->EventsSince(0, 0, std::nullopt, std::nullopt);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->events.size(), static_cast<std::size_t>(kJobs));
  for (int i = 1; i <= kJobs; ++i) {
    const msg::Event& e = page->events[static_cast<std::size_t>(i - 1)];
    EXPECT_EQ(e.seq, static_cast<std::uint64_t>(i));
    EXPECT_EQ(e.at_ms, 1000 + i);
    EXPECT_EQ(e.job.package, "pkg" + std::to_string(i));
  }
}

// Checkpoints run on their own thread, never in the commit (SQLite's automatic checkpoint is
// off), and the WAL stays bounded even when passes never find the writer between two
// transactions (back-to-back commits here): past wal_max_pages the writer restarts it itself.
TEST_F(StoreTest, WalIsCheckpointedOffTheCommitAndStaysBounded) {
  SqliteOptions o;
  o.wal_checkpoint_pages = 8;
  o.wal_max_pages = 32;
  auto s = Open(o);
  bool autocheckpoint_off = false, described = false;
  for (const auto& line : s->Describe()) {
    autocheckpoint_off |= line == "wal_autocheckpoint = 0";
    described |= line.rfind("wal_checkpoint = PASSIVE on its own thread", 0) == 0;
  }
  EXPECT_TRUE(autocheckpoint_off);
  EXPECT_TRUE(described);
  auto checkpoint_thread_runs = [] {
    for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
      std::ifstream comm(t.path() / "comm");
      std::string name;
      if (std::getline(comm, name) && name == "broker-ckpt") return true;
    }
    return false;
  };
  EXPECT_FALSE(checkpoint_thread_runs());  // started by the first commit that needs it
  const std::string wal = path_ + "-wal";
  const std::uintmax_t frame = 4096 + 24;
  std::uintmax_t largest = 0;
  std::uint64_t seq = 0;
  msg::Event e;
  e.job.dp = std::string("dp");
  e.job.package = std::string("p");
  e.job.source = std::string("/src/p");
  e.job.last_error = std::string(400, 'x');  // about one page per commit
  for (int round = 0; round < 200; ++round) {
    WriteBatch b;
    for (int i = 0; i < 8; ++i) {
      e.seq = ++seq;
      e.job.id = "e-" + std::to_string(seq);
      b.events.push_back(e);
    }
    ASSERT_TRUE(s->Commit(b).ok());
    largest = std::max(largest, std::filesystem::file_size(wal));
  }
  EXPECT_TRUE(checkpoint_thread_runs());
  // Past 2 x 32 frames the writer always restarts the WAL after its commit; a commit adds a few
  // frames: far below the 200+ pages the run wrote, and below SQLite's 1000-page automatic
  // checkpoint.
  EXPECT_LE(largest, 32 + (2 * static_cast<std::uintmax_t>(o.wal_max_pages) + 16) * frame)
      << "WAL grew to " << largest << " bytes";
  auto page = s->EventsSince(0, 0, std::nullopt, std::nullopt);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->events.size(), seq);
}

}  // namespace
}  // namespace despool::broker
