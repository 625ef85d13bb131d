// System tests under faults (issue 8): the real despool-broker, despool-worker processes and
// despoolctl / the client library on loopback, with readers holding files, stat-only validators
// on every live package directory and a hostile client throughout. Every scenario checks the
// four invariants (system_harness.h). Knobs and the soak mode: tests/system/README.md.
#include <gtest/gtest.h>
#include <sys/statvfs.h>

#include "ctl/process.h"
#include "system/system_harness.h"

namespace despool::systest {
namespace {

class SystemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* b : {"despool-broker", "despool-worker", "despoolctl"}) {
      if (BinDir().empty() || !fs::exists(BinDir() + "/" + b)) GTEST_SKIP() << "DESPOOL_BIN_DIR lacks " << b;
    }
    rng_.seed(Seed() + static_cast<std::uint32_t>(std::hash<std::string>{}(
                           ::testing::UnitTest::GetInstance()->current_test_info()->name())));
    RecordProperty("seed", std::to_string(Seed()));
    src_ = tmp_ / "src";
    fs::create_directories(src_);
  }

  void TearDown() override {
    // Order: observers first (they talk to the broker / read the DPs), then the processes.
    if (hostile_) hostile_->Stop();
    if (validator_) validator_->Stop();
    workers_.clear();
    broker_.reset();
  }

  void StartBroker(const std::string& extra_config = "") {
    broker_ = std::make_unique<SystemBroker>(tmp_.path(), extra_config);
    api_ = std::make_unique<Api>(broker_->frontend());
  }

  std::string Dp(const std::string& name) {
    const std::string root = tmp_ / ("dp-" + name);
    fs::create_directories(root);
    roots_[name] = root;
    return name + "=" + root;
  }

  Process& StartWorker(const std::string& name, const std::vector<std::string>& dps,
                       const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = extra;
    args.push_back("--log-level");
    args.push_back("debug");
    workers_[name] = despool::workertest::StartWorker(tmp_.path(), broker_->backend(), name, dps, args);
    EXPECT_TRUE(WaitFor([&] { return api_->HasWorker(name); }, seconds(20)))
        << name << " did not register:\n" << workers_[name]->log();
    return *workers_[name];
  }

  void StartHostile() {
    hostile_ = std::make_unique<HostileClient>(
        [this] { return std::make_pair(broker_->frontend(), broker_->backend()); }, rng_());
  }

  void StartValidator(const std::vector<std::string>& dps, const std::vector<std::string>& pkgs,
                      std::uint64_t max_version) {
    std::vector<TreeValidator::Target> targets;
    for (const auto& dp : dps) {
      for (const auto& p : pkgs) targets.push_back({dp, roots_.at(dp), p, max_version});
    }
    validator_ = std::make_unique<TreeValidator>(targets, shape_);
  }

  std::string Source(const std::string& pkg, std::uint64_t v) { return MakeSourceTree(src_, pkg, v, shape_); }
  std::string Live(const std::string& dp, const std::string& pkg) { return roots_.at(dp) + "/" + pkg; }

  // Submits through the client library; the ids become "acknowledged".
  std::vector<std::string> Submit(const std::vector<msg::Instruction>& ins) {
    auto r = api_->Submit(ins, milliseconds(15000));
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
    std::vector<std::string> ids;
    if (!r.ok()) return ids;
    for (const auto& j : r.value()) {
      EXPECT_TRUE(acked_.insert(j.id).second) << "job id handed out twice: " << j.id;
      ids.push_back(j.id);
    }
    return ids;
  }

  std::string Logs(std::size_t tail = 4000) const {
    std::string out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(tmp_.path(), ec)) {
      const std::string name = e.path().filename().string();
      if (name.size() > 4 && name.substr(name.size() - 4) == ".log") {
        std::string text = ReadFile(e.path().string());
        if (text.size() > tail) text = "..." + text.substr(text.size() - tail);
        out += "--- " + name + ":\n" + text;
      }
    }
    return out;
  }

  // The invariants every scenario ends with: (3) outcomes of acknowledged jobs and the final
  // live content, (1) no validator saw a bad tree, (4) hostile input was refused with the
  // right errors. Returns the final job list.
  std::vector<msg::JobInfo> CheckInvariants(std::size_t min_errors = 1) {
    EXPECT_TRUE(api_->WaitTerminal({acked_.begin(), acked_.end()}, seconds(120)))
        << "acknowledged jobs did not all end\n" << Logs();
    // Jobs stored but never acknowledged (a broker killed before its reply) run too.
    std::vector<msg::JobInfo> all;
    EXPECT_TRUE(WaitFor(
        [&] {
          try {
            all = api_->AllJobs();
          } catch (const std::exception&) {
            return false;
          }
          return std::all_of(all.begin(), all.end(), [](const msg::JobInfo& j) { return msg::IsTerminal(j.state); });
        },
        seconds(120)))
        << "unacknowledged jobs did not all end\n" << Logs();
    for (const auto& p : CheckOutcomes(all, acked_)) ADD_FAILURE() << "(3) " << p;
    if (validator_) {
      EXPECT_TRUE(validator_->WaitForFreshScans(seconds(30)));
      validator_->Stop();
      for (const auto& v : validator_->violations()) ADD_FAILURE() << "(1) " << v;
      EXPECT_GT(validator_->counted_scans(), 0u);
      std::printf("[ validator ] counted %llu scans, discarded %llu (raced a switch)\n",
                  static_cast<unsigned long long>(validator_->counted_scans()),
                  static_cast<unsigned long long>(validator_->discarded_scans()));
    }
    for (const auto& [key, v] : NewestVersions(all)) {
      if (!roots_.count(key.first)) continue;
      const std::string bad = CheckLiveContent(Live(key.first, key.second), key.second, v, shape_);
      if (bad.empty()) continue;
      std::string jobs;
      for (const auto& j : all) {
        if (j.dp == key.first && j.package == key.second) {
          jobs += "\n  " + j.id + " v" + std::to_string(j.version) + " " + msg::ToString(j.state) + " acked=" +
                  (acked_.count(j.id) ? "yes" : "no") + " " + j.last_error.value_or("");
        }
      }
      ADD_FAILURE() << key.first << "/" << key.second << " is not version " << v << ": " << bad << jobs;
    }
    if (hostile_) {
      hostile_->Stop();
      const auto t = hostile_->tally();
      std::printf("[ hostile   ] %llu frames sent, %llu refused with the right error, %llu unanswered\n",
                  static_cast<unsigned long long>(t.sent), static_cast<unsigned long long>(t.error_replies),
                  static_cast<unsigned long long>(t.no_reply));
      EXPECT_GE(t.error_replies, min_errors) << "(4) hostile frames drew no error replies";
      EXPECT_EQ(t.wrong_replies, 0u) << "(4) " << (t.wrong.empty() ? "" : t.wrong[0]);
    }
    return all;
  }

  bool SoakLeft(Clock::time_point started) const {
    return SoakSeconds() > 0 && Clock::now() - started < seconds(SoakSeconds());
  }

  TempDir tmp_;
  std::string src_;
  std::mt19937 rng_;
  PackageShape shape_;
  std::map<std::string, std::string> roots_;  // dp name -> root
  std::unique_ptr<SystemBroker> broker_;
  std::unique_ptr<Api> api_;
  std::map<std::string, std::unique_ptr<Process>> workers_;
  std::unique_ptr<HostileClient> hostile_;
  std::unique_ptr<TreeValidator> validator_;
  std::set<std::string> acked_;
};

// ---------------------------------------------------------------------------------------------
// The seed's failure, end to end through despoolctl: a held file defers the refresh (the holder
// is named), live stays on the old version and the job is retried; after the release it applies.
TEST_F(SystemTest, SeedFailureHeldFileDefersThenApplies) {
  using despool::testing::Ctl;
  StartBroker();
  StartWorker("w1", {Dp("lab1")});
  StartValidator({"lab1"}, {"app"}, 3);
  StartHostile();
  const std::string fe = broker_->frontend();

  auto r = Ctl({"--broker", fe, "submit", "--package", "app", "--version", "1", "--source", Source("app", 1), "--dp",
                "lab1", "--wait", "--wait-timeout", "60s"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << Logs();
  acked_.insert(r.out.substr(0, r.out.find('\t')));

  Reader reader(Live("lab1", "app") + "/data/f1.dat", HolderProcess::Mode::kOpen);
  ASSERT_TRUE(reader.ready()) << reader.error();
  ASSERT_TRUE(reader.held_live());

  r = Ctl({"--broker", fe, "submit", "--package", "app", "--version", "2", "--source", Source("app", 2), "--dp",
           "lab1", "--retry-base", "200ms", "--retry-max", "400ms", "--max-attempts", "1000"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const std::string id = r.out.substr(0, r.out.find('\t'));
  ASSERT_NE(r.out.find("\tlab1"), std::string::npos) << r.out;
  acked_.insert(id);

  // Deferred, the held file named, then retried at least once more while still held.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto j = api_->Job(id);
        return j && j->state == msg::JobState::kDeferred && j->attempts >= 2 &&
               std::count(j->in_use.begin(), j->in_use.end(), "data/f1.dat") == 1;
      },
      seconds(30)))
      << Logs();
  auto st = Ctl({"--broker", fe, "--json", "status", id});
  EXPECT_EQ(st.exit_code, 0) << st.err;
  EXPECT_NE(st.out.find("\"deferred\""), std::string::npos) << st.out;
  EXPECT_NE(st.out.find("data/f1.dat"), std::string::npos) << st.out;
  ASSERT_TRUE(validator_->WaitForFreshScans(seconds(20)));
  EXPECT_EQ(validator_->last_version(0), 1u) << "live changed while a file was held";

  EXPECT_EQ(reader.ReleaseAndCheck(), "") << "(2)";
  ASSERT_TRUE(WaitFor([&] { auto j = api_->Job(id); return j && j->state == msg::JobState::kApplied; },
                      seconds(30)))
      << Logs();

  // Nothing held now: --wait reports the outcome and exits 0.
  r = Ctl({"--broker", fe, "submit", "--package", "app", "--version", "3", "--source", Source("app", 3), "--dp",
           "lab1", "--wait", "--wait-timeout", "60s"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("applied"), std::string::npos) << r.out;
  acked_.insert(r.out.substr(0, r.out.find('\t')));
  CheckInvariants();
}

// ---------------------------------------------------------------------------------------------
// kill -9 of the broker at random points of a stream of submissions, restarted on its store and
// ports: every acknowledged job ends as its version says, ids are never reused.
TEST_F(SystemTest, BrokerKill9DuringSubmissionStream) {
  StartBroker();
  const std::vector<std::string> dps{"a", "b"};
  StartWorker("w1", {Dp("a"), Dp("b")});
  StartWorker("w2", {Dp("a"), Dp("b")});
  std::vector<std::string> pkgs;
  for (int i = 0; i < 6; ++i) pkgs.push_back("s" + std::to_string(i));
  const std::uint64_t max_version = SoakSeconds() > 0 ? 20000 : 400;
  StartValidator(dps, pkgs, max_version);
  StartHostile();

  std::atomic<bool> stop{false};
  std::mutex mu;
  std::uint64_t unacked = 0, acked_instr = 0;
  std::thread submitter([&] {
    Api api(broker_->frontend(), milliseconds(1000));
    std::map<std::string, std::uint64_t> next;
    std::mt19937 rng(rng_());
    while (!stop) {
      const std::string pkg = pkgs[rng() % pkgs.size()];
      const std::uint64_t v = ++next[pkg];
      if (v > max_version) break;
      auto r = api.Submit({MakeInstruction(pkg, v, Source(pkg, v), dps)});
      std::lock_guard<std::mutex> l(mu);
      if (r.ok()) {
        ++acked_instr;
        for (const auto& j : r.value()) {
          if (!acked_.insert(j.id).second) ADD_FAILURE() << "job id handed out twice: " << j.id;
        }
      } else {
        ++unacked;
      }
      const auto until = Clock::now() + milliseconds(15);
      while (!stop && Clock::now() < until) std::this_thread::sleep_for(milliseconds(5));  // pacing only
    }
  });

  const auto started = Clock::now();
  int kills = 0;
  do {
    for (int k = 0; k < 6; ++k) {
      // Random fault timing (not synchronisation): let the stream run 150..900 ms, then kill.
      std::this_thread::sleep_for(milliseconds(150 + rng_() % 750));
      broker_->Kill9();
      ++kills;
      broker_->Restart();
      ASSERT_TRUE(WaitFor([&] { return api_->client().Stats(milliseconds(1000)).ok(); }, seconds(20)))
          << "broker not serving after restart " << kills << "\n" << Logs();
    }
  } while (SoakLeft(started));
  // Let the stream run once more after the last restart, then stop it.
  const std::size_t before = [&] { std::lock_guard<std::mutex> l(mu); return acked_.size(); }();
  ASSERT_TRUE(WaitFor([&] { std::lock_guard<std::mutex> l(mu); return acked_.size() >= before + 4; }, seconds(20)));
  stop = true;
  submitter.join();
  std::printf("[ stream    ] %d broker kills, %llu instructions acknowledged, %llu unacknowledged\n", kills,
              static_cast<unsigned long long>(acked_instr), static_cast<unsigned long long>(unacked));
  EXPECT_GE(acked_instr, 10u);
  CheckInvariants();
}

// ---------------------------------------------------------------------------------------------
// kill -9 of a worker mid-copy (its staging tree exists) and mid-switch (its journal just
// appeared), repeated; a new worker recovers the DP and finishes. Live is never broken.
TEST_F(SystemTest, WorkerKill9MidCopyAndMidSwitch) {
  shape_.data_files = 3;
  shape_.big_bytes = 2u << 20;
  StartBroker();
  const std::string dp = Dp("k1");
  const std::string root = roots_["k1"];
  std::vector<std::string> pkgs{"q0", "q1", "q2"};
  const std::uint64_t max_version = SoakSeconds() > 0 ? 5000 : 40;
  StartValidator({"k1"}, pkgs, max_version);
  StartHostile();
  const std::vector<std::string> throttle{"--max-bytes-per-second", "3000000", "--concurrency", "1"};

  int n = 0;
  auto worker = [&]() -> Process& { return StartWorker("w" + std::to_string(++n), {dp}, throttle); };
  Process* w = &worker();
  std::map<std::string, std::uint64_t> version;
  for (const auto& p : pkgs) {
    version[p] = 1;
    Submit({MakeInstruction(p, 1, Source(p, 1), {"k1"})});
  }
  ASSERT_TRUE(api_->WaitTerminal({acked_.begin(), acked_.end()}, seconds(60))) << Logs();
  ASSERT_TRUE(fs::is_directory(root + "/.despool/journal"));

  int copy_kills = 0, switch_kills = 0, switch_confirmed = 0, after_exchange = 0;
  const auto started = Clock::now();
  int round = 0;
  do {
    for (int r = 0; r < 9; ++r, ++round) {
      const std::string pkg = pkgs[round % pkgs.size()];
      const std::uint64_t v = ++version[pkg];
      // 0: mid-copy; 1: the moment the switch intent is journaled; 2: the moment the live
      // directory is exchanged (before the manifest and journal are settled).
      const int mode = round % 3;
      const bool mid_switch = mode != 0;
      const int ino = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
      ASSERT_GE(ino, 0);
      const std::string watched = mode == 1 ? pkg + ".journal" : pkg;
      ASSERT_GE(::inotify_add_watch(ino, (mode == 1 ? root + "/.despool/journal" : root).c_str(),
                                    IN_CREATE | IN_MOVED_TO),
                0);
      Submit({MakeInstruction(pkg, v, Source(pkg, v), {"k1"})});
      bool killed = false;
      if (mid_switch) {
        // Kill the moment the switch intent is journaled.
        const auto deadline = Clock::now() + seconds(30);
        while (!killed && Clock::now() < deadline) {
          pollfd p{ino, POLLIN, 0};
          if (::poll(&p, 1, 200) <= 0) continue;
          alignas(inotify_event) char buf[4096];
          const ssize_t got = ::read(ino, buf, sizeof buf);
          for (ssize_t off = 0; got > 0 && off < got;) {
            const auto* e = reinterpret_cast<const inotify_event*>(buf + off);
            if (e->len > 0 && std::string(e->name) == watched) killed = true;
            off += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
          }
          if (killed) w->Kill();
        }
        ++switch_kills;
        if (killed && fs::exists(root + "/.despool/journal/" + pkg + ".journal")) {
          ++switch_confirmed;
          struct stat st;
          if (::stat((root + "/" + pkg + "/only-v" + std::to_string(v) + ".txt").c_str(), &st) == 0) ++after_exchange;
        }
      } else {
        killed = WaitFor([&] { return fs::exists(root + "/.despool/staging/" + pkg + "@" + std::to_string(v)); },
                         seconds(30));
        w->Kill();
        ++copy_kills;
      }
      ::close(ino);
      EXPECT_TRUE(killed) << "round " << round << ": the fault point was never reached\n" << Logs();
      // The broker notices the lost worker (heartbeats) and requeues; a new worker recovers the DP.
      w = &worker();
    }
  } while (SoakLeft(started));
  std::printf("[ kills     ] %d mid-copy, %d mid-switch (%d with the journal in place, %d after the exchange)\n",
              copy_kills, switch_kills, switch_confirmed, after_exchange);
  EXPECT_GE(switch_confirmed, 1) << "no kill landed while a switch was in flight";
  CheckInvariants();
  EXPECT_TRUE(!fs::exists(root + "/.despool/journal") || fs::is_empty(root + "/.despool/journal"));
}

// ---------------------------------------------------------------------------------------------
// Workers added and drained (SIGTERM) while jobs run; drained workers exit 0, nothing is lost.
TEST_F(SystemTest, WorkersAddedAndDrainedUnderLoad) {
  shape_.data_files = 3;
  shape_.big_bytes = 2u << 20;
  StartBroker();
  const std::vector<std::string> dps{Dp("d1"), Dp("d2")};
  std::vector<std::string> pkgs;
  for (int i = 0; i < 12; ++i) pkgs.push_back("r" + std::to_string(i));
  StartValidator({"d1", "d2"}, pkgs, 3);
  StartHostile();
  const std::vector<std::string> slow{"--max-bytes-per-second", "2000000", "--drain-timeout", "300ms"};
  StartWorker("w1", dps, slow);
  for (std::uint64_t v = 1; v <= 3; ++v) {
    std::vector<msg::Instruction> ins;
    for (const auto& p : pkgs) ins.push_back(MakeInstruction(p, v, Source(p, v), {"d1", "d2"}));
    Submit(ins);
  }
  auto busy = [&](const std::string& name) {
    return WaitFor([&] { return api_->Running(name) > 0; }, seconds(30));
  };
  ASSERT_TRUE(busy("w1")) << Logs();
  StartWorker("w2", dps, slow);
  EXPECT_EQ(workers_["w1"]->Terminate(), 0) << workers_["w1"]->log();
  StartWorker("w3", dps, slow);
  ASSERT_TRUE(busy("w2")) << Logs();
  EXPECT_EQ(workers_["w2"]->Terminate(), 0) << workers_["w2"]->log();
  StartWorker("w4", dps);
  const auto all = CheckInvariants();
  std::set<std::string> used;
  for (const auto& j : all) {
    if (j.worker) used.insert(*j.worker);
  }
  EXPECT_GE(used.size(), 3u) << "the added workers took no work";
  EXPECT_FALSE(api_->HasWorker("w1"));
}

// ---------------------------------------------------------------------------------------------
// N DPs x M packages x 3 versions with readers holding random files: every DP ends at the newest
// version of every package, held packages were deferred (the file named) and retried, no held
// file was replaced, no validator saw a bad tree. Default 4 x 10; DESPOOL_SYSTEM_FULL=1: 10 x 50.
TEST_F(SystemTest, DpsByPackagesByVersionsWithReaders) {
  const bool full = EnvLong("DESPOOL_SYSTEM_FULL", 0) != 0;
  const int ndp = static_cast<int>(EnvLong("DESPOOL_SYSTEM_DPS", full ? 10 : 4));
  const int npkg = static_cast<int>(EnvLong("DESPOOL_SYSTEM_PACKAGES", full ? 50 : 10));
  StartBroker();
  std::vector<std::string> dp_names, dp_specs, pkgs;
  for (int i = 0; i < ndp; ++i) {
    dp_names.push_back("dp" + std::to_string(i));
    dp_specs.push_back(Dp(dp_names.back()));
  }
  for (int i = 0; i < npkg; ++i) pkgs.push_back("m" + std::to_string(i));
  const std::uint64_t max_version = SoakSeconds() > 0 ? 3000 : 3;
  StartValidator(dp_names, pkgs, max_version);
  StartHostile();
  StartWorker("wa", dp_specs);
  StartWorker("wb", dp_specs);
  if (full) StartWorker("wc", dp_specs);

  // Deadlines and retry pacing scale with the matrix (10 x 50 runs ~25x the default's jobs).
  const seconds settle(90 + ndp * npkg / 2);
  const std::uint64_t retry_base_ms = ndp * npkg > 100 ? 1000 : 100;
  const auto started = Clock::now();
  std::uint64_t base = 0;
  int deferrals = 0, readers_total = 0;
  do {
    auto submit_all = [&](std::uint64_t v) {
      std::vector<msg::Instruction> ins;
      for (const auto& p : pkgs) ins.push_back(MakeInstruction(p, v, Source(p, v), dp_names, retry_base_ms));
      return Submit(ins);
    };
    ASSERT_TRUE(api_->WaitTerminal(submit_all(base + 1), settle + settle)) << Logs();

    // Readers on random data files of distinct (DP, package) pairs, taken while nothing runs.
    const int nreaders = std::max(4, ndp * npkg / 4);
    std::set<std::pair<int, int>> taken;
    std::vector<std::unique_ptr<Reader>> readers;
    std::map<std::pair<std::string, std::string>, std::string> held;  // (dp, pkg) -> rel path
    while (static_cast<int>(readers.size()) < nreaders) {
      const int d = static_cast<int>(rng_() % ndp), p = static_cast<int>(rng_() % npkg);
      if (!taken.insert({d, p}).second) continue;
      const std::string rel = "data/f" + std::to_string(rng_() % shape_.data_files) + ".dat";
      readers.push_back(std::make_unique<Reader>(Live(dp_names[d], pkgs[p]) + "/" + rel,
                                                 readers.size() % 2 ? HolderProcess::Mode::kMmap
                                                                    : HolderProcess::Mode::kOpen));
      ASSERT_TRUE(readers.back()->ready()) << readers.back()->error();
      ASSERT_TRUE(readers.back()->held_live());
      held[{dp_names[d], pkgs[p]}] = rel;
    }
    readers_total += nreaders;
    // A reader on a file no version changes (common.txt, linked from the live tree) must not
    // block: its package is refreshed at once and the held inode stays the live one.
    std::pair<int, int> free_pair{-1, -1};
    for (int d = 0; d < ndp && free_pair.first < 0; ++d) {
      for (int p = 0; p < npkg && free_pair.first < 0; ++p) {
        if (!taken.count({d, p})) free_pair = {d, p};
      }
    }
    std::unique_ptr<Reader> unchanged_reader;
    if (free_pair.first >= 0) {
      unchanged_reader = std::make_unique<Reader>(
          Live(dp_names[free_pair.first], pkgs[free_pair.second]) + "/common.txt", HolderProcess::Mode::kOpen);
      ASSERT_TRUE(unchanged_reader->ready() && unchanged_reader->held_live()) << unchanged_reader->error();
    }
    submit_all(base + 2);
    const std::vector<std::string> newest = submit_all(base + 3);

    // Every held pair's newest job gets deferred naming the held file; the others finish.
    std::map<std::string, msg::JobInfo> jobs;
    auto refresh = [&] {
      try {
        for (auto& j : api_->AllJobs()) jobs[j.id] = j;
      } catch (const std::exception&) {
        return false;
      }
      return true;
    };
    // (A job flips between deferred and running on each retry: a sighting counts once made.)
    std::set<std::string> seen_deferred;
    ASSERT_TRUE(WaitFor(
        [&] {
          if (!refresh()) return false;
          bool all = true;
          for (const auto& id : newest) {
            const auto& j = jobs[id];
            auto h = held.find({j.dp, j.package});
            if (h == held.end()) {
              if (!msg::IsTerminal(j.state)) all = false;
            } else if (j.state == msg::JobState::kDeferred &&
                       std::count(j.in_use.begin(), j.in_use.end(), h->second) == 1) {
              seen_deferred.insert(id);
            } else if (!seen_deferred.count(id)) {
              all = false;
            }
            if (h != held.end()) {
              EXPECT_FALSE(msg::IsTerminal(j.state)) << id << " ended while its file was held: " << msg::ToString(j.state);
            }
          }
          return all;
        },
        settle))
        << [&] {
             std::string pending;
             for (const auto& id : newest) {
               const auto& j = jobs[id];
               if (msg::IsTerminal(j.state) || seen_deferred.count(id)) continue;
               pending += "\n  " + id + " " + j.dp + "/" + j.package + " " + msg::ToString(j.state) +
                          " attempts=" + std::to_string(j.attempts) + " held=" +
                          (held.count({j.dp, j.package}) ? held[{j.dp, j.package}] : std::string("-")) +
                          " in_use=" + (j.in_use.empty() ? std::string("-") : j.in_use[0]) + " " +
                          j.last_error.value_or("");
             }
             return "not settled:" + pending + "\n" + Logs();
           }();
    deferrals += static_cast<int>(held.size());
    if (unchanged_reader) {
      for (const auto& id : newest) {
        const auto& j = jobs[id];
        if (j.dp != dp_names[free_pair.first] || j.package != pkgs[free_pair.second]) continue;
        EXPECT_EQ(j.state, msg::JobState::kApplied) << "a held unchanged file blocked " << id << ": "
                                                    << j.last_error.value_or("");
        EXPECT_EQ(j.attempts, 0u) << id;
      }
      EXPECT_EQ(unchanged_reader->ReleaseAndCheck(), "") << "the unchanged file was not linked into the new version";
    }
    ASSERT_TRUE(validator_->WaitForFreshScans(seconds(30)));

    // Release in random order; each held file must still be the live one.
    std::shuffle(readers.begin(), readers.end(), rng_);
    for (auto& r : readers) EXPECT_EQ(r->ReleaseAndCheck(), "") << "(2)";
    ASSERT_TRUE(api_->WaitTerminal(newest, settle + settle)) << Logs();
    refresh();
    for (const auto& id : newest) {
      const auto& j = jobs[id];
      EXPECT_EQ(j.state, msg::JobState::kApplied) << id << " " << j.dp << "/" << j.package;
      if (held.count({j.dp, j.package})) {
        EXPECT_GE(j.attempts, 1u) << "held package not deferred: " << id;
      }
    }
    base += 3;
  } while (SoakLeft(started) && base + 3 <= max_version);
  std::printf("[ matrix    ] %d DPs x %d packages, %llu versions, %d readers, %d deferred packages\n", ndp, npkg,
              static_cast<unsigned long long>(base), readers_total, deferrals);
  CheckInvariants();
}

// ---------------------------------------------------------------------------------------------
// A full disk on one DP (a small tmpfs): the refresh fails retryably, live stays untouched, the
// other DP is served, and once space frees the retry applies.
TEST_F(SystemTest, FullDiskOnOneDpRetriesUntilSpaceFrees) {
  const std::string mnt = tmp_ / "fulldisk";
  TmpfsMount tmpfs(mnt, "48m");
  if (!tmpfs.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here (" << tmpfs.error() << "): needs root/CAP_SYS_ADMIN";
  StartBroker();
  fs::create_directories(mnt + "/root");
  roots_["full"] = mnt + "/root";
  StartWorker("w1", {"full=" + mnt + "/root", Dp("ok")});
  StartValidator({"full", "ok"}, {"pkg"}, 3);
  StartHostile();
  ASSERT_TRUE(api_->WaitTerminal(Submit({MakeInstruction("pkg", 1, Source("pkg", 1), {"full", "ok"})}), seconds(60)))
      << Logs();

  // Leave ~6 MiB free: below what a refresh needs (copy + the engine's 16 MiB reserve).
  struct statvfs vfs;
  ASSERT_EQ(::statvfs(mnt.c_str(), &vfs), 0);
  const std::uint64_t avail = static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  const int fill = ::open((mnt + "/filler").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  ASSERT_GE(fill, 0);
  ASSERT_EQ(::posix_fallocate(fill, 0, static_cast<off_t>(avail - (6u << 20))), 0);
  ::close(fill);

  const auto ids = Submit({MakeInstruction("pkg", 2, Source("pkg", 2), {"full", "ok"})});
  ASSERT_EQ(ids.size(), 2u);
  std::optional<msg::JobInfo> full_job;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto ok_job = api_->Job(ids[1]);
        full_job = api_->Job(ids[0]);
        return ok_job && ok_job->state == msg::JobState::kApplied && full_job && full_job->attempts >= 2 &&
               !msg::IsTerminal(full_job->state);
      },
      seconds(30)))
      << (full_job ? msg::ToString(full_job->state) : "?") << "\n" << Logs();
  std::printf("[ full disk ] %s after %u attempts: %s\n", msg::ToString(full_job->state), full_job->attempts,
              full_job->last_error.value_or("").c_str());
  EXPECT_TRUE(full_job->last_error.has_value());
  ASSERT_TRUE(validator_->WaitForFreshScans(seconds(20)));
  EXPECT_EQ(validator_->last_version(0), 1u) << "live changed on the full DP";
  EXPECT_EQ(CheckLiveContent(Live("full", "pkg"), "pkg", 1, shape_), "");

  fs::remove(mnt + "/filler");
  ASSERT_TRUE(WaitFor([&] { auto j = api_->Job(ids[0]); return j && j->state == msg::JobState::kApplied; },
                      seconds(30)))
      << Logs();
  CheckInvariants();
}

// ---------------------------------------------------------------------------------------------
// Hostile input, checked attack by attack: each frame draws its error reply; an over-cap frame
// and a too-many-frames message drop only that peer; the broker and its workers keep serving.
TEST_F(SystemTest, HostileClientsRefusedAndEverythingKeepsServing) {
  StartBroker("[limits]\nmax_frame_bytes = 1048576\nmax_message_bytes = 2097152\n");
  StartWorker("w1", {Dp("lab1")});
  StartValidator({"lab1"}, {"h"}, 3);
  zmq::context_t ctx(1);
  auto send_expect = [&](const std::string& frame, std::optional<msg::ErrorKind> kind, const std::string& what) {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.connect(broker_->frontend());
    s.send(zmq::buffer(frame), zmq::send_flags::none);
    std::vector<zmq_pollitem_t> items{{s.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, milliseconds(kind ? 5000 : 500));
    zmq::message_t m;
    const bool got = (items[0].revents & ZMQ_POLLIN) && s.recv(m, zmq::recv_flags::dontwait);
    if (!kind) {
      EXPECT_FALSE(got) << what << ": a dropped peer got a reply";
      return;
    }
    ASSERT_TRUE(got) << what << ": no reply";
    auto d = msg::Decode(std::string_view(static_cast<const char*>(m.data()), m.size()));
    ASSERT_TRUE(d.ok()) << what;
    const auto* e = std::get_if<msg::ErrorReply>(&d.value().body);
    ASSERT_NE(e, nullptr) << what << ": not an error reply";
    EXPECT_EQ(e->kind, *kind) << what << ": " << e->message;
    EXPECT_FALSE(e->message.empty()) << what;
  };
  for (auto a : HostileClient::FrontendAttacks()) {
    if (a.name == "oversized") a.frame.resize((1u << 20) + 100, 'x');  // over this broker's 1 MiB
    send_expect(a.frame, a.kind, a.name);
  }
  send_expect(std::string(3u << 20, 'y'), std::nullopt, "over the transport cap");
  {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.connect(broker_->frontend());
    for (int i = 0; i < 8; ++i) s.send(zmq::str_buffer("f"), i < 7 ? zmq::send_flags::sndmore : zmq::send_flags::none);
    std::vector<zmq_pollitem_t> items{{s.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, milliseconds(500));
    EXPECT_FALSE(items[0].revents & ZMQ_POLLIN) << "too many frames: expected no reply";
  }
  // The real worker stayed registered and the broker serves a refresh end to end.
  StartHostile();
  EXPECT_TRUE(api_->HasWorker("w1"));
  for (std::uint64_t v = 1; v <= 3; ++v) {
    ASSERT_TRUE(api_->WaitTerminal(Submit({MakeInstruction("h", v, Source("h", v), {"lab1"})}), seconds(30)))
        << Logs();
  }
  ASSERT_TRUE(WaitFor([&] { return hostile_->tally().error_replies >= 10; }, seconds(60)));
  auto r = despool::testing::Ctl({"--broker", broker_->frontend(), "workers"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("w1"), std::string::npos) << r.out;
  CheckInvariants(10);
  EXPECT_TRUE(api_->HasWorker("w1")) << "hostile backend traffic disturbed the real worker\n" << Logs();
}

}  // namespace
}  // namespace despool::systest
