// system_e2e: the end-to-end figure issue 8 asks for — durable instructions/s and submit-to-ack
// p50/p99 with real despool-worker processes doing real (small) refreshes.
//
//   system_e2e [--instructions N] [--publishers P] [--workers W] [--files F] [--bytes B]
//              [--bin-dir DIR]
//
// A fresh despool-broker (default settings: SQLite synchronous=FULL) and W despool-workers
// serving one DP in a temp dir; P publisher threads each submit their share of N instructions
// (one instruction per submit, one in flight per publisher, distinct packages of F files of B
// bytes). Clock: first submit to the last job terminal (polled with `stats`).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
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

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

template <typename F>
bool Poll(F cond, milliseconds within) {
  const auto deadline = Clock::now() + within;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(10));  // polling interval
  }
  return cond();
}

}  // namespace

int main(int argc, char** argv) {
  int instructions = 400, publishers = 4, workers = 2, files = 4;
  std::size_t bytes = 1024;
  std::string bin_dir = std::getenv("DESPOOL_BIN_DIR") ? std::getenv("DESPOOL_BIN_DIR") : "";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--instructions") instructions = std::stoi(next());
    else if (a == "--publishers") publishers = std::max(1, std::stoi(next()));
    else if (a == "--workers") workers = std::max(1, std::stoi(next()));
    else if (a == "--files") files = std::max(1, std::stoi(next()));
    else if (a == "--bytes") bytes = std::stoul(next());
    else if (a == "--bin-dir") bin_dir = next();
    else {
      std::fprintf(stderr,
                   "usage: system_e2e [--instructions N] [--publishers P] [--workers W] [--files F] [--bytes B] "
                   "[--bin-dir DIR]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (bin_dir.empty()) bin_dir = fs::canonical("/proc/self/exe").parent_path().string();

  std::string tmpl = (fs::temp_directory_path() / "despool-e2e-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) return 1;
  const std::string dir = tmpl;
  int rc = 0;
  {
    // Sources: one small package per instruction.
    for (int i = 0; i < instructions; ++i) {
      for (int f = 0; f < files; ++f) {
        const std::string p = dir + "/src/p" + std::to_string(i) + "/f" + std::to_string(f);
        fs::create_directories(fs::path(p).parent_path());
        std::ofstream(p) << std::string(bytes, static_cast<char>('a' + (i + f) % 26));
      }
    }
    fs::create_directories(dir + "/dp");
    const std::string ep = dir + "/endpoints";
    Child broker({bin_dir + "/despool-broker", "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                  "--events", "tcp://127.0.0.1:*", "--store", dir + "/broker.db", "--endpoints-file", ep,
                  "--log-level", "warn"},
                 dir + "/broker.log");
    std::map<std::string, std::string> eps;
    Poll(
        [&] {
          std::ifstream f(ep);
          std::string line;
          while (std::getline(f, line)) {
            auto eq = line.find('=');
            if (eq != std::string::npos) eps[line.substr(0, eq)] = line.substr(eq + 1);
          }
          return eps.size() >= 3;
        },
        milliseconds(20000));
    if (eps.size() < 3) {
      std::fprintf(stderr, "broker did not start (see %s/broker.log)\n", dir.c_str());
      return 1;
    }
    std::vector<std::unique_ptr<Child>> pool;
    for (int w = 0; w < workers; ++w) {
      pool.push_back(std::make_unique<Child>(
          std::vector<std::string>{bin_dir + "/despool-worker", "--broker", eps["backend"], "--dp", "lab1=" + dir + "/dp",
                                   "--name", "e2e-w" + std::to_string(w), "--log-level", "warn"},
          dir + "/worker" + std::to_string(w) + ".log"));
    }
    despool::ctl::Client ctl;
    (void)ctl.Connect(eps["frontend"]);
    if (!Poll(
            [&] {
              auto s = ctl.Stats(milliseconds(1000));
              return s.ok() && s.value().workers == static_cast<std::uint32_t>(workers);
            },
            milliseconds(30000))) {
      std::fprintf(stderr, "workers did not register\n");
      return 1;
    }

    std::mutex mu;
    std::vector<double> lat_us;
    std::atomic<int> next{0}, errors{0};
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int p = 0; p < publishers; ++p) {
      threads.emplace_back([&] {
        despool::ctl::Client c;
        (void)c.Connect(eps["frontend"]);
        for (int i = next++; i < instructions; i = next++) {
          despool::msg::SubmitRequest req;
          despool::msg::Instruction in;
          // (Appending, not "p" + to_string(i): g++ 12 -O3 warns -Wrestrict on that, GCC bug 105329.)
          in.package = "p";
          in.package += std::to_string(i);
          in.version = 1;
          in.source = dir + "/src/" + in.package;
          in.dps = {"lab1"};
          req.instructions.push_back(in);
          const auto s = Clock::now();
          auto r = c.Submit(req, milliseconds(30000));
          const double us = std::chrono::duration<double, std::micro>(Clock::now() - s).count();
          if (!r.ok()) {
            ++errors;
            continue;
          }
          std::lock_guard<std::mutex> l(mu);
          lat_us.push_back(us);
        }
      });
    }
    for (auto& t : threads) t.join();
    const double ack_s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::uint64_t terminal = 0;
    const bool done = Poll(
        [&] {
          auto s = ctl.Stats(milliseconds(2000));
          if (!s.ok()) return false;
          std::uint64_t t = 0;
          for (const auto& c : s.value().jobs_by_state) {
            if (despool::msg::IsTerminal(c.state)) t += c.count;
          }
          terminal = t;
          return t >= static_cast<std::uint64_t>(instructions - errors.load());
        },
        milliseconds(600000));
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf("system_e2e: %d instructions (%d files x %zu bytes), %d publishers, %d despool-workers, "
                "synchronous=FULL\n",
                instructions, files, bytes, publishers, workers);
    std::printf("  end to end (first submit -> last job terminal): %.3f s = %.1f instructions/s%s\n", secs,
                static_cast<double>(terminal) / secs, done ? "" : " (TIMED OUT)");
    std::printf("  durable acks: %.3f s = %.1f acks/s, errors %d\n", ack_s,
                static_cast<double>(lat_us.size()) / ack_s, errors.load());
    std::printf("  submit->ack latency: p50 %.0f us, p99 %.0f us, max %.0f us\n", Percentile(lat_us, 0.5),
                Percentile(lat_us, 0.99), Percentile(lat_us, 1.0));
    rc = done && errors == 0 ? 0 : 1;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}
