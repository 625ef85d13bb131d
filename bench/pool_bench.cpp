// pool_bench: jobs/s of a despool-worker pool for small packages, with 1, 2 and 4 workers.
//
//   build/bin/pool_bench [--jobs 300] [--files 8] [--bytes 1024] [--workers 1,2,4]
//                        [--concurrency 2] [--rounds 2] [--bin-dir DIR]
//
// For each pool size: a fresh despool-broker (default settings: SQLite synchronous=FULL) and N
// despool-worker processes serving one DP on a temp dir, M distinct small packages submitted in
// one request, timed from the submit to the last job terminal (polled with `stats`). Binaries:
// --bin-dir, else $DESPOOL_BIN_DIR, else the directory of this program.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_child.h"
#include "despool/ctl/client.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

using despool::bench::Child;

struct Options {
  int jobs = 300;
  int files = 8;
  std::size_t bytes = 1024;
  std::vector<int> workers{1, 2, 4};
  int concurrency = 2;
  int rounds = 2;
  std::string bin_dir;
};

void WriteSource(const std::string& dir, int files, std::size_t bytes, int seed) {
  for (int i = 0; i < files; ++i) {
    // (Built with append, not "d" + to_string(): g++ 12 -O2 warns falsely (-Wrestrict) on that.)
    std::string sub = "d", file = "f";
    sub.append(std::to_string(i % 2));
    file.append(std::to_string(i));
    const fs::path p = fs::path(dir) / sub / file;
    fs::create_directories(p.parent_path());
    std::string content(bytes, 'a');
    for (std::size_t k = 0; k < bytes; ++k) content[k] = static_cast<char>('a' + (seed + i + k) % 26);
    // Written back now (our files only: sync() would flush the whole shared machine), so the
    // first run's fsyncs do not pay for them.
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ::write(fd, content.data(), content.size()) != static_cast<ssize_t>(content.size()) ||
        ::fdatasync(fd) != 0) {
      throw std::runtime_error("write " + p.string());
    }
    ::close(fd);
  }
}

double RunOnce(const Options& o, int workers, const std::string& sources) {
  char tmpl[] = "/tmp/despool-pool-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp");
  const std::string dir = tmpl;
  const std::string dp = dir + "/dp";
  fs::create_directories(dp);
  double rate = 0;
  const auto setup_from = Clock::now();
  auto setup_done = setup_from, teardown_from = setup_from;
  {
    const std::string ep = dir + "/endpoints";
    Child broker({o.bin_dir + "/despool-broker", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                  "--events", "tcp://127.0.0.1:*", "--store", dir + "/broker.db", "--endpoints-file", ep,
                  "--log-level", "warn"},
                 dir + "/broker.log", Child::Stop::kDrain);
    const auto start_deadline = Clock::now() + std::chrono::seconds(20);
    while (!fs::exists(ep)) {
      if (Clock::now() > start_deadline) throw std::runtime_error("broker did not start; see " + dir);
      std::this_thread::sleep_for(milliseconds(20));
    }
    std::string frontend, backend, line;
    std::ifstream f(ep);
    while (std::getline(f, line)) {
      if (line.rfind("frontend=", 0) == 0) frontend = line.substr(9);
      if (line.rfind("backend=", 0) == 0) backend = line.substr(8);
    }
    // Register deadline counted from the workers' start (a loaded machine starts them slowly).
    const auto register_deadline = Clock::now() + std::chrono::seconds(60);
    std::vector<std::unique_ptr<Child>> pool;
    for (int i = 0; i < workers; ++i) {
      pool.push_back(std::make_unique<Child>(
          std::vector<std::string>{o.bin_dir + "/despool-worker", "--broker", backend, "--dp", "lab1=" + dp, "--name",
                                   "bench-w" + std::to_string(i), "--concurrency", std::to_string(o.concurrency),
                                   "--log-level", "warn"},
          dir + "/worker" + std::to_string(i) + ".log", Child::Stop::kDrain));
    }
    despool::ctl::Client client;
    if (!client.Connect(frontend).ok()) throw std::runtime_error("connect");
    for (;;) {
      auto w = client.Workers();
      if (w.ok() && static_cast<int>(w->size()) == workers) break;
      if (Clock::now() > register_deadline) throw std::runtime_error("workers did not register; see " + dir);
      std::this_thread::sleep_for(milliseconds(20));
    }
    despool::msg::SubmitRequest req;
    for (int i = 0; i < o.jobs; ++i) {
      despool::msg::Instruction in;
      in.package = "pkg" + std::to_string(i);
      in.version = 1;
      in.source = sources + "/s" + std::to_string(i);
      in.dps = {"lab1"};
      req.instructions.push_back(std::move(in));
    }
    const auto t0 = Clock::now();
    setup_done = t0;
    auto submitted = client.Submit(req, milliseconds(60000));
    if (!submitted.ok()) throw std::runtime_error("submit: " + submitted.error().message);
    std::uint64_t applied = 0, terminal = 0;
    const auto deadline = t0 + std::chrono::minutes(10);
    for (;;) {
      auto stats = client.Stats();
      if (stats.ok()) {
        applied = terminal = 0;
        for (const auto& c : stats->jobs_by_state) {
          if (despool::msg::IsTerminal(c.state)) terminal += c.count;
          if (c.state == despool::msg::JobState::kApplied) applied += c.count;
        }
        if (terminal >= static_cast<std::uint64_t>(o.jobs)) break;
      }
      if (Clock::now() > deadline) throw std::runtime_error("jobs did not finish; see " + dir);
      std::this_thread::sleep_for(milliseconds(10));
    }
    const auto t1 = Clock::now();
    const double secs = std::chrono::duration<double>(t1 - t0).count();
    rate = o.jobs / secs;
    std::printf("workers=%d concurrency=%d jobs=%d applied=%llu seconds=%.2f jobs_per_s=%.1f\n", workers,
                o.concurrency, o.jobs, static_cast<unsigned long long>(applied), secs, rate);
    std::fflush(stdout);
    teardown_from = Clock::now();
  }
  std::fprintf(stderr, "pool_bench: setup %.1fs, teardown %.1fs\n",
               std::chrono::duration<double>(setup_done - setup_from).count(),
               std::chrono::duration<double>(Clock::now() - teardown_from).count());
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rate;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "pool_bench: " << a << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--jobs") {
      o.jobs = std::stoi(next());
    } else if (a == "--files") {
      o.files = std::stoi(next());
    } else if (a == "--bytes") {
      o.bytes = std::stoul(next());
    } else if (a == "--concurrency") {
      o.concurrency = std::stoi(next());
    } else if (a == "--rounds") {
      o.rounds = std::max(1, std::stoi(next()));
    } else if (a == "--bin-dir") {
      o.bin_dir = next();
    } else if (a == "--workers") {
      o.workers.clear();
      std::stringstream ss(next());
      std::string part;
      while (std::getline(ss, part, ',')) o.workers.push_back(std::stoi(part));
    } else {
      std::cerr << "usage: pool_bench [--jobs M] [--files F] [--bytes B] [--workers 1,2,4] [--concurrency C] "
                   "[--rounds R] [--bin-dir DIR]\n";
      return 2;
    }
  }
  if (o.bin_dir.empty()) {
    const char* env = std::getenv("DESPOOL_BIN_DIR");
    o.bin_dir = env ? env : fs::read_symlink("/proc/self/exe").parent_path().string();
  }
  char tmpl[] = "/tmp/despool-pool-src-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return 1;
  const std::string sources = tmpl;
  for (int i = 0; i < o.jobs; ++i) WriteSource(sources + "/s" + std::to_string(i), o.files, o.bytes, i);
  std::printf("pool_bench: %d packages of %d files x %zu bytes, hardware threads=%u\n", o.jobs, o.files, o.bytes,
              std::thread::hardware_concurrency());
  int rc = 0;
  try {
    // Rounds interleave the pool sizes, so a disturbance on the shared machine does not hit one
    // size only; the best round of each size is the summary.
    std::vector<double> best(o.workers.size(), 0);
    for (int r = 0; r < o.rounds; ++r) {
      for (std::size_t k = 0; k < o.workers.size(); ++k) best[k] = std::max(best[k], RunOnce(o, o.workers[k], sources));
    }
    std::printf("summary (best of %d rounds):", o.rounds);
    for (std::size_t k = 0; k < o.workers.size(); ++k) std::printf(" %d worker(s)=%.1f jobs/s", o.workers[k], best[k]);
    std::printf("\n");
  } catch (const std::exception& e) {
    std::cerr << "pool_bench: " << e.what() << "\n";
    rc = 1;
  }
  std::error_code ec;
  fs::remove_all(sources, ec);
  return rc;
}
