// The broker's HTTP endpoint under a big store: N jobs (default 100,000) over D DPs in a
// realistic mix of states are written straight into a fresh SQLite store, then the real broker
// (in-process, own thread) serves it with --http on loopback. Measures:
//  - /metrics scrape time (sequential scrapes; target < 250 ms);
//  - dashboard page load: GET / + app.css + app.js, then the page's six /api/v1 calls in
//    parallel (a browser's six connections per host); target < 1 s;
//  - a deep jobs page (offset N/2) and a DP-filtered page;
//  - headless Chromium --dump-dom of the page (browser start-up included), when installed.
//
//   http_bench [--jobs N] [--dps D] [--runs K] [--dir DIR]
#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "despool/broker/broker.h"
#include "despool/broker/store.h"
#include "despool/common/logging.h"
#include "despool/common/time.h"

namespace {

using namespace despool;
using Clock = std::chrono::steady_clock;

struct Options {
  std::uint64_t jobs = 100'000;
  std::uint64_t dps = 200;
  int runs = 15;
  std::string dir;
};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Figures {
  std::vector<double> ms;
  double Quantile(double q) {
    if (ms.empty()) return 0;
    std::sort(ms.begin(), ms.end());
    return ms[std::min(ms.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ms.size())))];
  }
  void Print(const char* what) {
    std::printf("%s: p50 %.1f ms, p90 %.1f ms, max %.1f ms (%zu runs)\n", what, Quantile(0.5), Quantile(0.9),
                Quantile(1.0), ms.size());
  }
};

// N jobs: 70% applied, 8% up-to-date, 5% superseded, 5% queued, 5% deferred (with an in-use file
// and a holder), 4% dead, 3% cancelled; D DPs, N/D packages per DP.
Status Fill(const Options& o, const std::string& path) {
  broker::SqliteOptions so;
  so.sync = broker::SyncMode::kNormal;
  auto opened = broker::OpenSqliteStore(path, so);
  if (!opened.ok()) return opened.take_error();
  auto& store = *opened.value();
  const std::int64_t now = NowMs();
  const std::uint64_t per_dp = std::max<std::uint64_t>(1, o.jobs / o.dps);
  broker::WriteBatch batch;
  for (std::uint64_t d = 0; d < o.dps; ++d) batch.new_dps.push_back("dp" + std::to_string(d));
  for (std::uint64_t i = 0; i < o.jobs; ++i) {
    broker::JobRecord r;
    r.seq = i + 1;
    auto& j = r.info;
    j.id = "bench-" + std::to_string(i + 1);
    j.package = "pkg" + std::to_string(i % per_dp);
    j.version = 1 + i / (per_dp * o.dps);
    j.dp = "dp" + std::to_string((i / per_dp) % o.dps);
    j.source = "/srv/src/" + j.package + "/" + std::to_string(j.version);
    j.max_attempts = 10;
    j.created_at_ms = now - static_cast<std::int64_t>(o.jobs - i) * 10;
    j.updated_at_ms = j.created_at_ms + 500;
    const auto bucket = i % 100;
    if (bucket < 70) {
      j.state = msg::JobState::kApplied;
      j.stats = msg::ApplyStats{120, 3, 117, 0, 5 << 20, 1 << 20, 850};
    } else if (bucket < 78) {
      j.state = msg::JobState::kUpToDate;
    } else if (bucket < 83) {
      j.state = msg::JobState::kSuperseded;
    } else if (bucket < 88) {
      j.state = msg::JobState::kQueued;
    } else if (bucket < 93) {
      j.state = msg::JobState::kDeferred;
      j.attempts = 2;
      j.next_attempt_at_ms = now + 3'600'000;
      j.in_use = {"bin/app.exe", "lib/x.so"};
      j.holders = {{4242, "smbd", "bin/app.exe"}};
      j.last_error = "2 file(s) in use";
    } else if (bucket < 97) {
      j.state = msg::JobState::kDead;
      j.attempts = 10;
      j.last_error = "2 file(s) in use";
    } else {
      j.state = msg::JobState::kCancelled;
    }
    batch.jobs.emplace(j.id, std::move(r));
    if (batch.jobs.size() == 10'000 || i + 1 == o.jobs) {
      batch.next_job_seq = i + 2;
      DESPOOL_RETURN_IF_ERROR(store.Commit(batch));
      batch = broker::WriteBatch{};
    }
  }
  return Status::Ok();
}

class RunningBroker {
 public:
  Status Start(const broker::BrokerSettings& s) {
    auto store = broker::OpenSqliteStore(s.store_path, s.store);
    if (!store.ok()) return store.take_error();
    auto reader = broker::OpenSqliteStore(s.store_path, s.store);
    if (!reader.ok()) return reader.take_error();
    b_ = std::make_unique<broker::Broker>(s, std::move(store).value(), std::move(reader).value());
    DESPOOL_RETURN_IF_ERROR(b_->Start());
    if (::pipe(pipe_) != 0) return MakeError(ErrorCode::kIo, "pipe");
    thread_ = std::thread([this] { status_ = b_->Run(pipe_[0]); });
    return Status::Ok();
  }
  const std::string& url() const { return b_->endpoints().http; }
  ~RunningBroker() {
    if (!thread_.joinable()) return;
    if (::write(pipe_[1], "x", 1) != 1) std::abort();
    thread_.join();
    ::close(pipe_[0]);
    ::close(pipe_[1]);
  }

 private:
  std::unique_ptr<broker::Broker> b_;
  std::thread thread_;
  Status status_;
  int pipe_[2] = {-1, -1};
};

bool Get(httplib::Client& c, const std::string& path, std::size_t* bytes = nullptr) {
  auto r = c.Get(path);
  if (!r || r->status != 200) {
    std::fprintf(stderr, "http_bench: GET %s failed (%d)\n", path.c_str(), r ? r->status : -1);
    return false;
  }
  if (bytes) *bytes = r->body.size();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    auto next = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "http_bench: %s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--jobs")) {
      o.jobs = std::strtoull(next("--jobs"), nullptr, 10);
    } else if (!std::strcmp(argv[i], "--dps")) {
      o.dps = std::max<std::uint64_t>(1, std::strtoull(next("--dps"), nullptr, 10));
    } else if (!std::strcmp(argv[i], "--runs")) {
      o.runs = std::max(1, std::atoi(next("--runs")));
    } else if (!std::strcmp(argv[i], "--dir")) {
      o.dir = next("--dir");
    } else {
      std::fprintf(stderr, "usage: http_bench [--jobs N] [--dps D] [--runs K] [--dir DIR]\n");
      return 2;
    }
  }
  const bool own_dir = o.dir.empty();
  if (own_dir) {
    char tmpl[] = "/tmp/despool-http-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) return 1;
    o.dir = tmpl;
  }
  LogOptions lo;
  lo.level = spdlog::level::warn;
  (void)SetupLogging(lo);
  int rc = 0;
  {
    const std::string db = o.dir + "/broker.db";
    auto t0 = Clock::now();
    if (Status st = Fill(o, db); !st.ok()) {
      std::fprintf(stderr, "http_bench: fill: %s\n", st.error().message.c_str());
      return 1;
    }
    std::printf("http_bench: %llu jobs over %llu DPs written in %.1f s\n", static_cast<unsigned long long>(o.jobs),
                static_cast<unsigned long long>(o.dps), Ms(Clock::now() - t0) / 1000);

    broker::BrokerSettings s;
    s.frontend = s.backend = s.events = "tcp://127.0.0.1:*";
    s.store_path = db;
    s.http = "127.0.0.1:0";
    RunningBroker b;
    t0 = Clock::now();
    if (Status st = b.Start(s); !st.ok()) {
      std::fprintf(stderr, "http_bench: broker: %s\n", st.error().message.c_str());
      return 1;
    }
    std::printf("broker start (store load): %.1f ms, serving %s\n", Ms(Clock::now() - t0), b.url().c_str());

    httplib::Client c(b.url());
    c.set_read_timeout(30, 0);
    Figures scrape;
    std::size_t metrics_bytes = 0;
    for (int r = 0; r < o.runs; ++r) {
      const auto a = Clock::now();
      if (!Get(c, "/metrics", &metrics_bytes)) return 1;
      scrape.ms.push_back(Ms(Clock::now() - a));
    }
    scrape.Print("metrics scrape");
    std::printf("metrics size: %zu bytes\n", metrics_bytes);

    // What the page fetches (broker/web/app.js refresh()).
    const std::vector<std::string> api = {"/api/v1/stats",
                                          "/api/v1/workers",
                                          "/api/v1/jobs?state=deferred&limit=100",
                                          "/api/v1/jobs?state=dead&limit=50",
                                          "/api/v1/jobs?limit=1000",
                                          "/api/v1/jobs?limit=50&offset=0"};
    Figures page, polls;
    for (int r = 0; r < o.runs; ++r) {
      const auto a = Clock::now();
      for (const char* asset : {"/", "/app.css", "/app.js"}) {
        if (!Get(c, asset)) return 1;
      }
      const auto p0 = Clock::now();
      std::vector<std::thread> threads;
      std::atomic<bool> ok{true};
      for (const auto& path : api) {
        threads.emplace_back([&, path] {
          httplib::Client cc(b.url());
          cc.set_read_timeout(30, 0);
          if (!Get(cc, path)) ok = false;
        });
      }
      for (auto& t : threads) t.join();
      if (!ok) return 1;
      const auto end = Clock::now();
      page.ms.push_back(Ms(end - a));
      polls.ms.push_back(Ms(end - p0));
    }
    page.Print("page load (html+css+js, then 6 API calls in parallel)");
    polls.Print("one poll (6 API calls in parallel)");
    for (const std::string& path :
         {"/api/v1/jobs?limit=100&offset=" + std::to_string(o.jobs / 2), std::string("/api/v1/jobs?dp=dp7&limit=100"),
          std::string("/api/v1/jobs?limit=1000"), std::string("/api/v1/stats")}) {
      Figures f;
      for (int r = 0; r < std::max(3, o.runs / 3); ++r) {
        const auto a = Clock::now();
        if (!Get(c, path)) return 1;
        f.ms.push_back(Ms(Clock::now() - a));
      }
      f.Print(("GET " + path).c_str());
    }

    if (std::filesystem::exists("/usr/bin/chromium")) {
      const std::string profile = o.dir + "/chromium-profile";
      const std::string cmd = "timeout 60 /usr/bin/chromium --headless --no-sandbox --disable-gpu --disable-quic "
                              "--no-first-run --disable-background-networking --disable-component-update "
                              "--disable-sync --user-data-dir=" + profile +
                              " --virtual-time-budget=3000 --dump-dom '" + b.url() + "/?poll=60000' 2>/dev/null";
      const auto a = Clock::now();
      std::string dom;
      if (FILE* p = ::popen(cmd.c_str(), "r")) {
        char buf[65536];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) dom.append(buf, n);
        ::pclose(p);
      }
      const bool loaded = dom.find("data-loaded=\"true\"") != std::string::npos;
      std::printf("chromium --dump-dom (browser start-up included): %.0f ms, page data %s\n", Ms(Clock::now() - a),
                  loaded ? "loaded" : "NOT loaded");
      if (!loaded) rc = 1;
    }
  }
  if (own_dir) {
    std::error_code ec;
    std::filesystem::remove_all(o.dir, ec);
  }
  return rc;
}
