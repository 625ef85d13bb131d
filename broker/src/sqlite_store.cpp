// SQLite implementation of the broker store: WAL, synchronous=FULL by default, a versioned
// schema applied through a migrations table, prepared statements reused for every commit.
#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <random>
#include <tuple>

#include "despool/broker/store.h"
#include "despool/common/logging.h"
#include "despool/messages/codec.h"
#include "job_json.h"
#include "wal_checkpointer.h"

namespace despool::broker {
namespace {

using nlohmann::json;

std::int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Schema migrations, applied in order; each runs once, recorded in schema_migrations.
constexpr const char* kMigrations[] = {
    // 1: initial schema
    R"sql(
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE jobs (
  id TEXT PRIMARY KEY,
  seq INTEGER NOT NULL,
  kind INTEGER NOT NULL,
  package TEXT NOT NULL,
  version INTEGER NOT NULL,
  dp TEXT NOT NULL,
  source TEXT NOT NULL,
  state INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  max_attempts INTEGER NOT NULL,
  retry_base_ms INTEGER NOT NULL,
  retry_max_ms INTEGER NOT NULL,
  on_exhausted INTEGER NOT NULL,
  repair INTEGER NOT NULL,
  checksum INTEGER NOT NULL,
  next_attempt_at INTEGER,
  last_error TEXT,
  in_use TEXT,
  holders TEXT,
  worker TEXT,
  attempt_token INTEGER NOT NULL,
  force_next INTEGER NOT NULL,
  forced_running INTEGER NOT NULL,
  cancel_reason INTEGER NOT NULL,
  released_step INTEGER NOT NULL,
  started_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  report TEXT,
  stats TEXT
) WITHOUT ROWID;
CREATE INDEX jobs_by_state ON jobs(state, updated_at);
CREATE TABLE job_history (
  job_id TEXT NOT NULL,
  attempt INTEGER NOT NULL,
  worker TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  ended_at INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  error TEXT,
  in_use TEXT
);
CREATE INDEX job_history_by_job ON job_history(job_id);
CREATE TABLE dps (name TEXT PRIMARY KEY, first_seen INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
  seq INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  dp TEXT NOT NULL,
  package TEXT NOT NULL,
  payload BLOB NOT NULL
);
)sql",
};

constexpr int kJobColumnCount = 30;
constexpr const char* kJobColumns =
    "id, seq, kind, package, version, dp, source, state, attempts, max_attempts, retry_base_ms, "
    "retry_max_ms, on_exhausted, repair, checksum, next_attempt_at, last_error, in_use, holders, "
    "worker, attempt_token, force_next, forced_running, cancel_reason, released_step, started_at, "
    "created_at, updated_at, report, stats";

Error SqlError(sqlite3* db, const std::string& what) {
  return MakeError(ErrorCode::kIo, what + ": " + (db ? sqlite3_errmsg(db) : "out of memory"));
}

class Stmt {
 public:
  Stmt() = default;
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  ~Stmt() { sqlite3_finalize(s_); }

  Status Prepare(sqlite3* db, const std::string& sql) {
    sqlite3_finalize(s_);
    s_ = nullptr;
    if (sqlite3_prepare_v3(db, sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &s_, nullptr) != SQLITE_OK) {
      return SqlError(db, "prepare '" + sql.substr(0, 60) + "'");
    }
    return Status::Ok();
  }
  sqlite3_stmt* get() const { return s_; }
  void Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  void Bind(int i, std::int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
  }
  // Without a copy: `v` must stay alive and unchanged until the statement is reset.
  void BindStatic(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  void BindStatic(int i, const std::optional<std::string>& v) {
    if (v) {
      BindStatic(i, *v);
    } else {
      BindNull(i);
    }
  }
  void BindNull(int i) { sqlite3_bind_null(s_, i); }
  template <typename T>
  void BindOpt(int i, const std::optional<T>& v) {
    if (v) {
      Bind(i, *v);
    } else {
      BindNull(i);
    }
  }

 private:
  sqlite3_stmt* s_ = nullptr;
};

std::string ColText(sqlite3_stmt* s, int i) {
  const unsigned char* t = sqlite3_column_text(s, i);
  return t ? std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(s, i)) : std::string();
}
bool ColNull(sqlite3_stmt* s, int i) { return sqlite3_column_type(s, i) == SQLITE_NULL; }
std::int64_t ColInt(sqlite3_stmt* s, int i) { return sqlite3_column_int64(s, i); }

// Reads a jobs row selected with kJobColumns. Throws json exceptions on corrupt blobs.
// light: skip what the Core does not keep for a parked (deferred) job — last error, in-use
// paths, holders, worker, report, stats — and their JSON parsing.
JobRecord ReadJob(sqlite3_stmt* s, bool light = false) {
  JobRecord r;
  msg::JobInfo& j = r.info;
  j.id = ColText(s, 0);
  r.seq = static_cast<std::uint64_t>(ColInt(s, 1));
  j.kind = static_cast<msg::JobKind>(ColInt(s, 2));
  j.package = ColText(s, 3);
  j.version = static_cast<std::uint64_t>(ColInt(s, 4));
  j.dp = ColText(s, 5);
  j.source = ColText(s, 6);
  j.state = static_cast<msg::JobState>(ColInt(s, 7));
  j.attempts = static_cast<std::uint32_t>(ColInt(s, 8));
  j.max_attempts = static_cast<std::uint32_t>(ColInt(s, 9));
  r.policy.retry_base_ms = static_cast<std::uint64_t>(ColInt(s, 10));
  r.policy.retry_max_ms = static_cast<std::uint64_t>(ColInt(s, 11));
  r.policy.on_exhausted = static_cast<msg::OnExhausted>(ColInt(s, 12));
  r.policy.max_attempts = j.max_attempts;
  r.repair = ColInt(s, 13) != 0;
  r.checksum = ColInt(s, 14) != 0;
  if (!ColNull(s, 15)) j.next_attempt_at_ms = ColInt(s, 15);
  if (!light) {
    if (!ColNull(s, 16)) j.last_error = ColText(s, 16);
    if (!ColNull(s, 17)) j.in_use = json::parse(ColText(s, 17)).get<std::vector<std::string>>();
    if (!ColNull(s, 18)) j.holders = HoldersFromJson(json::parse(ColText(s, 18)));
    if (!ColNull(s, 19)) j.worker = ColText(s, 19);
  }
  r.attempt_token = static_cast<std::uint64_t>(ColInt(s, 20));
  r.force_next = ColInt(s, 21) != 0;
  r.forced_running = ColInt(s, 22) != 0;
  r.cancel_reason = static_cast<CancelReason>(ColInt(s, 23));
  r.released_step = static_cast<std::uint32_t>(ColInt(s, 24));
  r.started_at_ms = ColInt(s, 25);
  j.created_at_ms = ColInt(s, 26);
  j.updated_at_ms = ColInt(s, 27);
  if (light) return r;
  if (!ColNull(s, 28)) j.report = ReportFromJson(json::parse(ColText(s, 28)));
  if (!ColNull(s, 29)) j.stats = StatsFromJson(json::parse(ColText(s, 29)));
  return r;
}

// One INSERT per batch of rows rather than one per row: a multi-row VALUES statement runs its
// per-statement work (cursor opening, schema and transaction checks, reset) once for up to
// kMaxRows rows. Statements are prepared on first use for each row count and kept.
class MultiRowInsert {
 public:
  static constexpr std::size_t kMaxRows = 32;

  // head: "INSERT INTO t(a, b)"; columns: values per row; tail: e.g. an ON CONFLICT clause.
  MultiRowInsert(std::string head, int columns, std::string tail = "")
      : head_(std::move(head)), tail_(std::move(tail)), columns_(columns) {}

  int columns() const { return columns_; }

  // The statement for `rows` rows (1..kMaxRows); row r's column c is parameter r*columns+c+1.
  Result<Stmt*> For(sqlite3* db, std::size_t rows) {
    auto& slot = stmts_[rows - 1];
    if (!slot) {
      std::string sql = head_ + " VALUES";
      for (std::size_t r = 0; r < rows; ++r) {
        sql += r == 0 ? "(" : ",(";
        for (int c = 0; c < columns_; ++c) sql += c == 0 ? "?" : ",?";
        sql += ")";
      }
      sql += tail_;
      auto stmt = std::make_unique<Stmt>();
      DESPOOL_RETURN_IF_ERROR(stmt->Prepare(db, sql));
      slot = std::move(stmt);
    }
    return slot.get();
  }

 private:
  std::string head_, tail_;
  int columns_;
  std::array<std::unique_ptr<Stmt>, kMaxRows> stmts_;
};

// Process-wide SQLite settings, applied once before the first connection opens (sqlite3_config
// is refused once SQLite is initialised; then the defaults simply stay).
void ConfigureSqliteOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Memory statistics take a global mutex on every allocation: ~8% of a commit's CPU.
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  });
}

std::string RandomStoreId() {
  std::random_device rd;
  std::uniform_int_distribution<int> d(0, 35);
  const char* digits = "0123456789abcdefghijklmnopqrstuvwxyz";
  std::string s;
  for (int i = 0; i < 6; ++i) s += digits[d(rd)];
  return s;
}

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(SqliteOptions opts) : opts_(opts) {}
  ~SqliteStore() override {
    // The checkpointer's connection first, then statements: sqlite3_close refuses while any
    // statement is alive.
    checkpointer_.reset();
    get_job_.reset();
    upsert_job_.reset();
    insert_attempt_.reset();
    insert_dp_.reset();
    insert_event_.reset();
    prune_events_.reset();
    set_meta_.reset();
    begin_.reset();
    commit_.reset();
    rollback_.reset();
    if (db_) sqlite3_close(db_);
  }

  Status Open(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        nullptr) != SQLITE_OK) {
      return SqlError(db_, "open store " + path);
    }
    sqlite3_busy_timeout(db_, opts_.busy_timeout_ms);
    path_ = path;
    DESPOOL_RETURN_IF_ERROR(Exec("PRAGMA journal_mode=WAL"));
    wal_ = QueryText("PRAGMA journal_mode") == "wal";  // ":memory:" stays "memory"
    if (wal_ && opts_.wal_checkpoint_pages > 0) {
      // Our hook replaces SQLite's automatic checkpoint (which ran inside the commit).
      sqlite3_wal_hook(db_, &SqliteStore::OnWalCommit, this);
      // A WAL that grew in a burst is cut back to this when it starts over.
      DESPOOL_RETURN_IF_ERROR(Exec("PRAGMA journal_size_limit=" +
                                   std::to_string(std::int64_t{std::max(opts_.wal_max_pages, opts_.wal_checkpoint_pages)} *
                                                  std::stoll("0" + QueryText("PRAGMA page_size")))));
    }
    DESPOOL_RETURN_IF_ERROR(Exec(opts_.sync == SyncMode::kFull ? "PRAGMA synchronous=FULL"
                                                                : "PRAGMA synchronous=NORMAL"));
    DESPOOL_RETURN_IF_ERROR(Exec("PRAGMA foreign_keys=OFF"));
    DESPOOL_RETURN_IF_ERROR(Exec("PRAGMA temp_store=MEMORY"));
    DESPOOL_RETURN_IF_ERROR(Exec("PRAGMA cache_size=-" + std::to_string(opts_.cache_kib)));
    DESPOOL_RETURN_IF_ERROR(Migrate());
    DESPOOL_RETURN_IF_ERROR(PrepareStatements());
    return Status::Ok();
  }

  Result<LoadedState> Load() override {
    std::vector<JobRecord> jobs;
    auto st = Load([&jobs](JobRecord&& r) { jobs.push_back(std::move(r)); }, /*light_deferred=*/false);
    if (st.ok()) {
      std::sort(jobs.begin(), jobs.end(), [](const JobRecord& a, const JobRecord& b) { return a.seq < b.seq; });
      st->active_jobs = std::move(jobs);
    }
    return st;
  }

  Result<LoadedState> Load(const ActiveJobSink& sink) override { return Load(sink, /*light_deferred=*/true); }

  Result<LoadedState> Load(const ActiveJobSink& sink, bool light_deferred) {
    LoadedState st;
    try {
      {
        Stmt q;
        DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, "SELECT key, value FROM meta"));
        while (sqlite3_step(q.get()) == SQLITE_ROW) {
          std::string k = ColText(q.get(), 0), v = ColText(q.get(), 1);
          if (k == "store_id") st.store_id = v;
          if (k == "next_job_seq") st.next_job_seq = std::stoull(v);
        }
      }
      {
        Stmt q;
        DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, "SELECT name FROM dps ORDER BY first_seen, name"));
        while (sqlite3_step(q.get()) == SQLITE_ROW) st.dps.push_back(ColText(q.get(), 0));
      }
      {
        Stmt q;
        DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, "SELECT MIN(seq), MAX(seq) FROM events"));
        if (sqlite3_step(q.get()) == SQLITE_ROW && !ColNull(q.get(), 1)) {
          oldest_event_ = static_cast<std::uint64_t>(ColInt(q.get(), 0));
          st.last_event_seq = static_cast<std::uint64_t>(ColInt(q.get(), 1));
        }
        Stmt m;
        DESPOOL_RETURN_IF_ERROR(m.Prepare(db_, "SELECT value FROM meta WHERE key='last_event_seq'"));
        if (sqlite3_step(m.get()) == SQLITE_ROW) {
          st.last_event_seq = std::max<std::uint64_t>(st.last_event_seq, std::stoull(ColText(m.get(), 0)));
        }
      }
      {
        // A covering-index count; the Core keeps the counts current afterwards.
        Stmt q;
        DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state"));
        while (sqlite3_step(q.get()) == SQLITE_ROW) {
          const auto state = static_cast<std::size_t>(ColInt(q.get(), 0));
          if (state < st.jobs_by_state.size()) st.jobs_by_state[state] = static_cast<std::uint64_t>(ColInt(q.get(), 1));
        }
      }
      {
        // Queued and running jobs in creation order (the order queued jobs resume in); deferred
        // ones in index order, streamed without a sort (their order does not matter: a heap).
        Stmt q;
        DESPOOL_RETURN_IF_ERROR(q.Prepare(
            db_, std::string("SELECT ") + kJobColumns + " FROM jobs WHERE state IN (0,1) ORDER BY seq"));
        int rc;
        while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) sink(ReadJob(q.get()));
        if (rc != SQLITE_DONE) return SqlError(db_, "load jobs");
        Stmt d;
        DESPOOL_RETURN_IF_ERROR(d.Prepare(db_, std::string("SELECT ") + kJobColumns + " FROM jobs WHERE state=2"));
        while ((rc = sqlite3_step(d.get())) == SQLITE_ROW) sink(ReadJob(d.get(), light_deferred));
        if (rc != SQLITE_DONE) return SqlError(db_, "load deferred jobs");
      }
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruption, std::string("store: ") + e.what());
    }
    return st;
  }

  Status Commit(const WriteBatch& b) override {
    if (b.empty()) return Status::Ok();
    if (sqlite3_step(begin_->get()) != SQLITE_DONE) {
      begin_->Reset();
      return SqlError(db_, "begin");
    }
    begin_->Reset();
    pruned_to_.reset();
    Status st = WriteAll(b);
    if (!st.ok()) {
      sqlite3_step(rollback_->get());
      rollback_->Reset();
      return st;
    }
    if (sqlite3_step(commit_->get()) != SQLITE_DONE) {
      commit_->Reset();
      Error e = SqlError(db_, "commit");
      sqlite3_step(rollback_->get());
      rollback_->Reset();
      return e;
    }
    commit_->Reset();
    if (!b.events.empty() && oldest_event_ == 0) oldest_event_ = b.events.front().seq;
    if (pruned_to_) oldest_event_ = std::max(oldest_event_, *pruned_to_);
    AfterCommit();
    return Status::Ok();
  }

  Result<std::optional<JobRecord>> GetJob(const std::string& id) override {
    // Prepared once: deferred jobs are reloaded through here when they come due.
    if (!get_job_) {
      get_job_ = std::make_unique<Stmt>();
      DESPOOL_RETURN_IF_ERROR(get_job_->Prepare(db_, std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id=?"));
    }
    Stmt& q = *get_job_;
    q.Bind(1, id);
    int rc = SQLITE_ERROR;
    std::optional<JobRecord> found;
    try {
      rc = sqlite3_step(q.get());
      if (rc == SQLITE_ROW) found = ReadJob(q.get());
    } catch (const std::exception& e) {
      q.Reset();
      return MakeError(ErrorCode::kCorruption, std::string("store: ") + e.what());
    }
    q.Reset();
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) return found;
    return SqlError(db_, "get job");
  }

  // One indexed query per state (jobs_by_state is (state, updated_at), so no query sorts more
  // than `limit` rows even with a million jobs), merged: non-terminal jobs oldest change first,
  // then terminal jobs newest first.
  Result<std::vector<JobRecord>> ListJobs(const JobFilter& f) override {
    std::string where;
    if (f.package) where += " AND package=:package";
    if (f.dp) where += " AND dp=:dp";
    const std::string limit = f.limit == 0 ? "" : " LIMIT " + std::to_string(f.limit);
    auto per_state = [&](msg::JobState state, std::vector<JobRecord>& out) -> Status {
      const bool terminal = msg::IsTerminal(state);
      Stmt q;
      DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, std::string("SELECT ") + kJobColumns + " FROM jobs WHERE state=:state" +
                                                 where + (terminal ? " ORDER BY updated_at DESC" : " ORDER BY updated_at") +
                                                 limit));
      q.Bind(sqlite3_bind_parameter_index(q.get(), ":state"), static_cast<std::int64_t>(state));
      if (f.package) q.Bind(sqlite3_bind_parameter_index(q.get(), ":package"), *f.package);
      if (f.dp) q.Bind(sqlite3_bind_parameter_index(q.get(), ":dp"), *f.dp);
      int rc;
      while ((rc = sqlite3_step(q.get())) == SQLITE_ROW) out.push_back(ReadJob(q.get()));
      if (rc != SQLITE_DONE) return SqlError(db_, "list jobs");
      return Status::Ok();
    };
    std::vector<JobRecord> active, done;
    try {
      for (int i = 0; i <= static_cast<int>(msg::JobState::kDead); ++i) {
        const auto state = static_cast<msg::JobState>(i);
        if (f.state && *f.state != state) continue;
        DESPOOL_RETURN_IF_ERROR(per_state(state, msg::IsTerminal(state) ? done : active));
      }
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruption, std::string("store: ") + e.what());
    }
    std::stable_sort(active.begin(), active.end(), [](const JobRecord& a, const JobRecord& b) {
      return std::tie(a.info.updated_at_ms, a.seq) < std::tie(b.info.updated_at_ms, b.seq);
    });
    std::stable_sort(done.begin(), done.end(), [](const JobRecord& a, const JobRecord& b) {
      return std::tie(a.info.updated_at_ms, a.seq) > std::tie(b.info.updated_at_ms, b.seq);
    });
    std::vector<JobRecord> out = std::move(active);
    for (auto& j : done) out.push_back(std::move(j));
    if (f.limit != 0 && out.size() > f.limit) out.resize(f.limit);
    return out;
  }

  Result<std::vector<AttemptRecord>> History(const std::string& job_id) override {
    Stmt q;
    DESPOOL_RETURN_IF_ERROR(q.Prepare(
        db_, "SELECT job_id, attempt, worker, started_at, ended_at, outcome, error, in_use "
             "FROM job_history WHERE job_id=? ORDER BY rowid"));
    q.Bind(1, job_id);
    std::vector<AttemptRecord> out;
    try {
      while (sqlite3_step(q.get()) == SQLITE_ROW) {
        AttemptRecord a;
        a.job_id = ColText(q.get(), 0);
        a.attempt = static_cast<std::uint64_t>(ColInt(q.get(), 1));
        a.worker = ColText(q.get(), 2);
        a.started_at_ms = ColInt(q.get(), 3);
        a.ended_at_ms = ColInt(q.get(), 4);
        a.outcome = ColText(q.get(), 5);
        if (!ColNull(q.get(), 6)) a.error = ColText(q.get(), 6);
        if (!ColNull(q.get(), 7)) a.in_use = json::parse(ColText(q.get(), 7)).get<std::vector<std::string>>();
        out.push_back(std::move(a));
      }
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruption, std::string("store: ") + e.what());
    }
    return out;
  }

  Result<EventsPage> EventsSince(std::uint64_t since, std::uint32_t limit,
                                 const std::optional<std::string>& dp,
                                 const std::optional<std::string>& package) override {
    EventsPage page;
    // The window comes from the tables, not from this object's counters: this may be the
    // reader connection (pipelined queries, HTTP), whose counters no Load or Commit ever set.
    // One read transaction, so the window and the rows are the same snapshot.
    DESPOOL_RETURN_IF_ERROR(Exec("BEGIN"));
    struct EndRead {
      SqliteStore* self;
      ~EndRead() { (void)self->Exec("COMMIT"); }
    } end_read{this};
    {
      Stmt w;
      DESPOOL_RETURN_IF_ERROR(w.Prepare(
          db_, "SELECT (SELECT MIN(seq) FROM events), (SELECT value FROM meta WHERE key='last_event_seq')"));
      if (sqlite3_step(w.get()) != SQLITE_ROW) return SqlError(db_, "read the event window");
      if (!ColNull(w.get(), 0)) page.oldest_seq = static_cast<std::uint64_t>(ColInt(w.get(), 0));
      if (!ColNull(w.get(), 1)) page.last_seq = std::strtoull(ColText(w.get(), 1).c_str(), nullptr, 10);
      page.last_seq = std::max(page.last_seq, page.oldest_seq);
    }
    std::string sql = "SELECT seq, at, payload FROM events WHERE seq > :since";
    if (dp) sql += " AND dp=:dp";
    if (package) sql += " AND package=:package";
    sql += " ORDER BY seq";
    if (limit != 0) sql += " LIMIT " + std::to_string(limit);
    Stmt q;
    DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, sql));
    q.Bind(sqlite3_bind_parameter_index(q.get(), ":since"),
           static_cast<std::int64_t>(std::min<std::uint64_t>(since, INT64_MAX)));
    if (dp) q.Bind(sqlite3_bind_parameter_index(q.get(), ":dp"), *dp);
    if (package) q.Bind(sqlite3_bind_parameter_index(q.get(), ":package"), *package);
    try {
      while (sqlite3_step(q.get()) == SQLITE_ROW) {
        const void* blob = sqlite3_column_blob(q.get(), 2);
        const auto size = static_cast<std::size_t>(sqlite3_column_bytes(q.get(), 2));
        msg::DecodeLimits limits;
        limits.max_frame_bytes = 64u << 20;
        auto decoded = msg::Decode(std::string_view(static_cast<const char*>(blob), size), limits);
        if (!decoded.ok() || !std::holds_alternative<msg::Event>(decoded.value().body)) {
          return MakeError(ErrorCode::kCorruption, "stored event " + std::to_string(ColInt(q.get(), 0)) +
                                                       " cannot be decoded");
        }
        page.events.push_back(std::move(std::get<msg::Event>(decoded.value().body)));
      }
    } catch (const std::exception& e) {
      return MakeError(ErrorCode::kCorruption, std::string("store: ") + e.what());
    }
    return page;
  }

  Result<StoreCounts> Counts() override {
    StoreCounts c;
    Stmt q;
    DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state"));
    while (sqlite3_step(q.get()) == SQLITE_ROW) {
      c.by_state[static_cast<msg::JobState>(ColInt(q.get(), 0))] = static_cast<std::uint64_t>(ColInt(q.get(), 1));
    }
    Stmt o;
    DESPOOL_RETURN_IF_ERROR(o.Prepare(db_, "SELECT MIN(updated_at) FROM jobs WHERE state=0"));
    if (sqlite3_step(o.get()) == SQLITE_ROW && !ColNull(o.get(), 0)) c.oldest_queued_at_ms = ColInt(o.get(), 0);
    Stmt d;
    DESPOOL_RETURN_IF_ERROR(
        d.Prepare(db_, "SELECT dp, state, COUNT(*) FROM jobs WHERE state IN (0,1,2) GROUP BY dp, state"));
    while (sqlite3_step(d.get()) == SQLITE_ROW) {
      auto& a = c.active_by_dp[ColText(d.get(), 0)];
      a[static_cast<std::size_t>(ColInt(d.get(), 1))] = static_cast<std::uint64_t>(ColInt(d.get(), 2));
    }
    return c;
  }

  Result<std::optional<std::int64_t>> OldestQueuedAt() override {
    Stmt o;
    DESPOOL_RETURN_IF_ERROR(o.Prepare(db_, "SELECT MIN(updated_at) FROM jobs WHERE state=0"));
    std::optional<std::int64_t> at;
    const int rc = sqlite3_step(o.get());
    if (rc == SQLITE_ROW && !ColNull(o.get(), 0)) at = ColInt(o.get(), 0);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(db_, "oldest queued");
    return at;
  }

  std::vector<std::string> Describe() override {
    std::vector<std::string> out;
    for (const char* p : {"journal_mode", "synchronous", "wal_autocheckpoint", "page_size",
                          "cache_size", "busy_timeout", "temp_store", "user_version"}) {
      Stmt q;
      if (!q.Prepare(db_, std::string("PRAGMA ") + p).ok()) continue;
      if (sqlite3_step(q.get()) != SQLITE_ROW) continue;
      std::string value = ColText(q.get(), 0);
      if (std::string_view(p) == "synchronous") {
        static const char* kNames[] = {"OFF", "NORMAL", "FULL", "EXTRA"};
        const auto v = ColInt(q.get(), 0);
        if (v >= 0 && v <= 3) value = kNames[v];
      }
      if (std::string_view(p) == "temp_store") value = ColInt(q.get(), 0) == 2 ? "MEMORY" : value;
      out.push_back(std::string(p) + " = " + value);
    }
    if (wal_ && opts_.wal_checkpoint_pages > 0) {
      out.push_back("wal_checkpoint = PASSIVE on its own thread and connection from " +
                    std::to_string(opts_.wal_checkpoint_pages) + " pages (none in the commit); the writer's own after a commit past " +
                    std::to_string(opts_.wal_max_pages) + " pages when no pass runs, always past " +
                    std::to_string(2 * opts_.wal_max_pages));
      out.push_back("journal_size_limit = " + QueryText("PRAGMA journal_size_limit"));
    }
    out.push_back("events_retention = " + std::to_string(opts_.events_retention));
    out.push_back(std::string("sqlite_version = ") + sqlite3_libversion());
    return out;
  }

 private:
  Status Exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string m = err ? err : "unknown error";
      sqlite3_free(err);
      return MakeError(ErrorCode::kIo, "sqlite: " + m + " (in '" + sql.substr(0, 60) + "')");
    }
    return Status::Ok();
  }

  // The first column of the first row of `sql`, or "".
  std::string QueryText(const std::string& sql) {
    Stmt q;
    if (!q.Prepare(db_, sql).ok() || sqlite3_step(q.get()) != SQLITE_ROW) return "";
    return ColText(q.get(), 0);
  }

  // sqlite3_wal_hook: runs inside sqlite3_step(COMMIT) on the commit thread, after the WAL is
  // written and synced. Only notes the size; the checkpointer is started and told in AfterCommit.
  static int OnWalCommit(void* self, sqlite3*, const char*, int frames) {
    auto* store = static_cast<SqliteStore*>(self);
    store->wal_frames_ = frames;
    store->wal_max_seen_ = std::max(store->wal_max_seen_, frames);
    return SQLITE_OK;
  }

  // After a successful commit: the commit stands whatever happens here, so problems are logged.
  void AfterCommit() {
    if (!wal_ || opts_.wal_checkpoint_pages <= 0 || wal_frames_ < opts_.wal_checkpoint_pages) return;
    if (!checkpointer_) {
      auto started = WalCheckpointer::Start(path_, opts_.wal_checkpoint_pages, opts_.sync == SyncMode::kFull);
      if (!started.ok()) {
        // Without it the WAL is still bounded: every commit past wal_max_pages checkpoints.
        GetLogger("store")->warn("cannot start the checkpoint thread error={}", LogQuote(started.error().message));
      } else {
        checkpointer_ = std::move(started).value();
      }
    }
    if (checkpointer_ && (opts_.wal_max_pages <= 0 || wal_frames_ < opts_.wal_max_pages)) {
      checkpointer_->Notify(wal_frames_);
      return;
    }
    // Past wal_max_pages no pass found the writer between two transactions (the only moment the
    // WAL can start over). Do it here, after this commit: copy what the passes left (the frames
    // of the last commits), and the next commit starts the WAL over. Waiting for a running pass
    // would add its fsync to this commit's wait, so that is only done past twice the limit.
    // PASSIVE, as SQLite's own automatic checkpoint: RESTART would also wait (busy timeout, on
    // the ack path) for readers; a long read pins the WAL in any mode until it ends.
    std::optional<WalCheckpointer::Hold> hold;
    if (checkpointer_) {
      hold.emplace(*checkpointer_, /*wait=*/wal_frames_ >= 2 * opts_.wal_max_pages);
      if (!hold->held()) {
        checkpointer_->Notify(wal_frames_);
        return;
      }
    }
    int log_frames = 0, backfilled = 0;
    const int rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log_frames, &backfilled);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
      GetLogger("store")->warn("wal checkpoint failed error={}", LogQuote(sqlite3_errmsg(db_)));
    }
    ++forced_checkpoints_;
  }

  std::vector<std::string> Activity() override {
    std::vector<std::string> out;
    if (!wal_) return out;
    out.push_back("wal_pages_max = " + std::to_string(wal_max_seen_));
    if (checkpointer_) {
      const auto st = checkpointer_->stats();
      out.push_back("checkpoint_passes = " + std::to_string(st.checkpoints) + " (" +
                    std::to_string(st.ns / 1'000'000) + " ms on their thread)");
    }
    out.push_back("checkpoints_in_commit = " + std::to_string(forced_checkpoints_));
    return out;
  }

  Status Migrate() {
    DESPOOL_RETURN_IF_ERROR(
        Exec("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)"));
    std::int64_t current = 0;
    {
      Stmt q;
      DESPOOL_RETURN_IF_ERROR(q.Prepare(db_, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
      if (sqlite3_step(q.get()) == SQLITE_ROW) current = ColInt(q.get(), 0);
    }
    const std::int64_t known = static_cast<std::int64_t>(std::size(kMigrations));
    if (current > known) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "store schema version " + std::to_string(current) +
                           " is newer than this broker understands (" + std::to_string(known) + ")");
    }
    for (std::int64_t v = current + 1; v <= known; ++v) {
      DESPOOL_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
      Status st = Exec(kMigrations[v - 1]);
      if (st.ok()) {
        st = Exec("INSERT INTO schema_migrations(version, applied_at) VALUES(" + std::to_string(v) + ", " +
                  std::to_string(NowMs()) + ")");
      }
      if (st.ok() && v == 1) {
        st = Exec("INSERT INTO meta(key, value) VALUES('store_id', '" + RandomStoreId() +
                  "'), ('next_job_seq', '1'), ('last_event_seq', '0')");
      }
      if (st.ok()) st = Exec("PRAGMA user_version=" + std::to_string(v));
      if (!st.ok()) {
        (void)Exec("ROLLBACK");
        return st;
      }
      DESPOOL_RETURN_IF_ERROR(Exec("COMMIT"));
    }
    return Status::Ok();
  }

  Status PrepareStatements() {
    upsert_job_ = std::make_unique<MultiRowInsert>(
        std::string("INSERT INTO jobs(") + kJobColumns + ")", kJobColumnCount,
        // An upsert updates in place (REPLACE would delete and re-insert the row and every
        // index entry); only the mutable columns change after creation.
        " ON CONFLICT(id) DO UPDATE SET state=excluded.state, attempts=excluded.attempts, "
        "max_attempts=excluded.max_attempts, next_attempt_at=excluded.next_attempt_at, "
        "last_error=excluded.last_error, in_use=excluded.in_use, holders=excluded.holders, "
        "worker=excluded.worker, attempt_token=excluded.attempt_token, force_next=excluded.force_next, "
        "forced_running=excluded.forced_running, cancel_reason=excluded.cancel_reason, "
        "released_step=excluded.released_step, started_at=excluded.started_at, "
        "updated_at=excluded.updated_at, report=excluded.report, stats=excluded.stats");
    insert_attempt_ = std::make_unique<MultiRowInsert>(
        "INSERT INTO job_history(job_id, attempt, worker, started_at, ended_at, outcome, error, in_use)", 8);
    insert_event_ = std::make_unique<MultiRowInsert>("INSERT INTO events(seq, at, dp, package, payload)", 5);
    insert_dp_ = std::make_unique<Stmt>();
    set_meta_ = std::make_unique<Stmt>();
    prune_events_ = std::make_unique<Stmt>();
    begin_ = std::make_unique<Stmt>();
    commit_ = std::make_unique<Stmt>();
    rollback_ = std::make_unique<Stmt>();
    DESPOOL_RETURN_IF_ERROR(
        insert_dp_->Prepare(db_, "INSERT OR IGNORE INTO dps(name, first_seen) VALUES(?1, ?2)"));
    DESPOOL_RETURN_IF_ERROR(
        set_meta_->Prepare(db_, "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)"));
    DESPOOL_RETURN_IF_ERROR(prune_events_->Prepare(db_, "DELETE FROM events WHERE seq < ?1"));
    DESPOOL_RETURN_IF_ERROR(begin_->Prepare(db_, "BEGIN IMMEDIATE"));
    DESPOOL_RETURN_IF_ERROR(commit_->Prepare(db_, "COMMIT"));
    DESPOOL_RETURN_IF_ERROR(rollback_->Prepare(db_, "ROLLBACK"));
    return Status::Ok();
  }

  Status Step(Stmt& s, const char* what) {
    int rc = sqlite3_step(s.get());
    s.Reset();
    if (rc != SQLITE_DONE) return SqlError(db_, what);
    return Status::Ok();
  }

  // Writes `items` through `insert`, up to MultiRowInsert::kMaxRows rows per statement;
  // bind(stmt, first_parameter, item) binds one row. Text is bound without copying, so
  // anything bind() makes up must live in `scratch` (kept until the statement ran).
  template <typename Items, typename BindRow>
  Status InsertRows(MultiRowInsert& insert, const Items& items, const char* what, BindRow bind) {
    auto it = items.begin();
    std::size_t left = items.size();
    while (left > 0) {
      const std::size_t rows = std::min(left, MultiRowInsert::kMaxRows);
      auto stmt = insert.For(db_, rows);
      if (!stmt.ok()) return stmt.take_error();
      scratch_.clear();
      scratch_.reserve(rows * 4);  // never reallocates while rows are bound (<= 4 per row)
      for (std::size_t r = 0; r < rows; ++r, ++it) bind(**stmt, static_cast<int>(r) * insert.columns() + 1, *it);
      DESPOOL_RETURN_IF_ERROR(Step(**stmt, what));
      left -= rows;
    }
    return Status::Ok();
  }

  // Keeps a string made up while binding alive until the statement ran; returns it.
  const std::string& Keep(std::string s) { return scratch_.emplace_back(std::move(s)); }

  void BindJob(Stmt& s, int p, const JobRecord& r) {
    const msg::JobInfo& j = r.info;
    s.BindStatic(p + 0, j.id);
    s.Bind(p + 1, static_cast<std::int64_t>(r.seq));
    s.Bind(p + 2, static_cast<std::int64_t>(j.kind));
    s.BindStatic(p + 3, j.package);
    s.Bind(p + 4, static_cast<std::int64_t>(j.version));
    s.BindStatic(p + 5, j.dp);
    s.BindStatic(p + 6, j.source);
    s.Bind(p + 7, static_cast<std::int64_t>(j.state));
    s.Bind(p + 8, static_cast<std::int64_t>(j.attempts));
    s.Bind(p + 9, static_cast<std::int64_t>(r.policy.max_attempts));
    s.Bind(p + 10, static_cast<std::int64_t>(r.policy.retry_base_ms));
    s.Bind(p + 11, static_cast<std::int64_t>(r.policy.retry_max_ms));
    s.Bind(p + 12, static_cast<std::int64_t>(r.policy.on_exhausted));
    s.Bind(p + 13, std::int64_t{r.repair});
    s.Bind(p + 14, std::int64_t{r.checksum});
    s.BindOpt(p + 15, j.next_attempt_at_ms);
    s.BindStatic(p + 16, j.last_error);
    if (j.in_use.empty()) {
      s.BindNull(p + 17);
    } else {
      s.BindStatic(p + 17, Keep(json(j.in_use).dump()));
    }
    if (j.holders.empty()) {
      s.BindNull(p + 18);
    } else {
      s.BindStatic(p + 18, Keep(HoldersToJson(j.holders).dump()));
    }
    s.BindStatic(p + 19, j.worker);
    s.Bind(p + 20, static_cast<std::int64_t>(r.attempt_token));
    s.Bind(p + 21, std::int64_t{r.force_next});
    s.Bind(p + 22, std::int64_t{r.forced_running});
    s.Bind(p + 23, static_cast<std::int64_t>(r.cancel_reason));
    s.Bind(p + 24, static_cast<std::int64_t>(r.released_step));
    s.Bind(p + 25, r.started_at_ms);
    s.Bind(p + 26, j.created_at_ms);
    s.Bind(p + 27, j.updated_at_ms);
    if (j.report) {
      s.BindStatic(p + 28, Keep(ReportToJson(*j.report).dump()));
    } else {
      s.BindNull(p + 28);
    }
    if (j.stats) {
      s.BindStatic(p + 29, Keep(StatsToJson(*j.stats).dump()));
    } else {
      s.BindNull(p + 29);
    }
  }

  Status WriteAll(const WriteBatch& b) {
    DESPOOL_RETURN_IF_ERROR(InsertRows(*upsert_job_, b.jobs, "upsert jobs",
                                       [this](Stmt& s, int p, const auto& kv) { BindJob(s, p, kv.second); }));
    DESPOOL_RETURN_IF_ERROR(InsertRows(*insert_attempt_, b.attempts, "insert attempts",
                                       [this](Stmt& s, int p, const AttemptRecord& a) {
                                         s.BindStatic(p + 0, a.job_id);
                                         s.Bind(p + 1, static_cast<std::int64_t>(a.attempt));
                                         s.BindStatic(p + 2, a.worker);
                                         s.Bind(p + 3, a.started_at_ms);
                                         s.Bind(p + 4, a.ended_at_ms);
                                         s.BindStatic(p + 5, a.outcome);
                                         s.BindStatic(p + 6, a.error);
                                         if (a.in_use.empty()) {
                                           s.BindNull(p + 7);
                                         } else {
                                           s.BindStatic(p + 7, Keep(json(a.in_use).dump()));
                                         }
                                       }));
    const std::int64_t now = NowMs();
    for (const auto& dp : b.new_dps) {
      insert_dp_->Bind(1, dp);
      insert_dp_->Bind(2, now);
      DESPOOL_RETURN_IF_ERROR(Step(*insert_dp_, "insert dp"));
    }
    // Events with their encoded envelope: the loop's (encoded once for the store and the PUB
    // socket) or, when it gave none, encoded here.
    std::size_t index = 0;
    DESPOOL_RETURN_IF_ERROR(InsertRows(*insert_event_, b.events, "insert events",
                                       [&](Stmt& s, int p, const msg::Event& e) {
                                         const std::size_t i = index++;
                                         const std::string& payload =
                                             i < b.encoded_events.size()
                                                 ? b.encoded_events[i]
                                                 : Keep(msg::Encode(msg::Envelope{msg::kProtocolVersion, 0, e}));
                                         s.Bind(p + 0, static_cast<std::int64_t>(e.seq));
                                         s.Bind(p + 1, e.at_ms);
                                         s.BindStatic(p + 2, e.job.dp);
                                         s.BindStatic(p + 3, e.job.package);
                                         sqlite3_bind_blob(s.get(), p + 4, payload.data(),
                                                           static_cast<int>(payload.size()), SQLITE_STATIC);
                                       }));
    if (!b.events.empty()) {
      set_meta_->Bind(1, std::string("last_event_seq"));
      set_meta_->Bind(2, std::to_string(b.events.back().seq));
      DESPOOL_RETURN_IF_ERROR(Step(*set_meta_, "set last_event_seq"));
      DESPOOL_RETURN_IF_ERROR(PruneEvents(b));
    }
    if (b.next_job_seq) {
      set_meta_->Bind(1, std::string("next_job_seq"));
      set_meta_->Bind(2, std::to_string(*b.next_job_seq));
      DESPOOL_RETURN_IF_ERROR(Step(*set_meta_, "set next_job_seq"));
    }
    return Status::Ok();
  }

  // Deletes events beyond the retention window, inside the batch's transaction: a few hundred
  // rows at a time, never more than about twice what the batch adds, so no commit carries a
  // large delete (a 10,000-row delete in its own transaction took 5-7 ms of CPU and a second
  // fsync on the ack path) and a backlog (retention lowered, restart) still drains. A little
  // slack (up to 10% of the window) lets one delete take several rows per page.
  Status PruneEvents(const WriteBatch& b) {
    const std::uint64_t last = b.events.back().seq;
    const std::uint64_t retention = opts_.events_retention;
    if (retention == 0 || last < retention) return Status::Ok();
    const std::uint64_t keep_from = last - retention + 1;
    const std::uint64_t oldest = oldest_event_ == 0 ? b.events.front().seq : oldest_event_;
    const std::uint64_t slack = std::min<std::uint64_t>(retention / 10, 256);
    if (oldest + slack >= keep_from) return Status::Ok();
    const std::uint64_t budget = 2 * b.events.size() + 512;
    const std::uint64_t delete_below = std::min(keep_from, oldest + budget);
    prune_events_->Bind(1, static_cast<std::int64_t>(delete_below));
    DESPOOL_RETURN_IF_ERROR(Step(*prune_events_, "prune events"));
    pruned_to_ = delete_below;  // the oldest kept, once the transaction commits
    return Status::Ok();
  }

  SqliteOptions opts_;
  sqlite3* db_ = nullptr;
  std::string path_;
  bool wal_ = false;
  int wal_frames_ = 0;                          // WAL size after the last commit
  int wal_max_seen_ = 0;                        // the largest WAL after a commit
  std::uint64_t forced_checkpoints_ = 0;        // by the writer, past wal_max_pages
  std::unique_ptr<WalCheckpointer> checkpointer_;
  std::unique_ptr<Stmt> get_job_;
  std::unique_ptr<MultiRowInsert> upsert_job_, insert_attempt_, insert_event_;
  std::unique_ptr<Stmt> insert_dp_, set_meta_, prune_events_, begin_, commit_, rollback_;
  std::vector<std::string> scratch_;            // strings bound to the statement being run
  std::uint64_t oldest_event_ = 0;              // the oldest stored event, for PruneEvents
  std::optional<std::uint64_t> pruned_to_;      // set by the batch being written
};

}  // namespace

Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path, const SqliteOptions& opts) {
  if (path != ":memory:" && !path.empty()) {
    std::error_code ec;
    const auto parent = std::filesystem::path(path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec) return MakeError(ErrorCode::kIo, "create store directory " + parent.string() + ": " + ec.message());
  }
  ConfigureSqliteOnce();
  auto store = std::make_unique<SqliteStore>(opts);
  DESPOOL_RETURN_IF_ERROR(store->Open(path));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace despool::broker
