// Broker throughput: P publishers with at most K submits in flight each, every instruction its
// own submit and durable ack; 4 bench workers answer every dispatch "up-to-date" at once.
// The clock runs from the first submit until the last job's terminal state is committed (seen
// through stats after the last ack). Prints instructions/s, submit-to-ack p50/p99, the SQLite
// PRAGMAs in force and where the broker loop spent its time.
//
//   broker_bench [--instructions N] [--publishers P] [--inflight K] [--workers W]
//                [--capacity C] [--sync full|normal] [--dir DIR] [--rate R]
//   broker_bench --deferred-scale --instructions 1000000 --defer-base-s 300 [--dps D]
//
// --rate R paces submits to R instructions/s in total (latency at a given load); 0 = flat out.
// The broker runs in-process on its own thread with its own ZeroMQ context, on loopback TCP.
//
// --deferred-scale: every instruction (one DP each) is submitted through the frontend; the
// bench workers answer each job's first dispatch `deferred` (one file in use), so the broker
// parks it until due = deferral + defer-base exactly (retry base = max); its second dispatch is
// answered up-to-date. Here the broker runs as its own process (this program re-executed with
// --broker-child) so its VmRSS/VmHWM are the broker's alone and a restart is a real one. Once
// every job is deferred: RSS, then the broker is stopped (SIGTERM-equivalent drain) and started
// again on the same store; restart time = exec until its sockets are bound; then the due
// retries run while the workers serve them: lateness due -> queued (dispatchable) and due ->
// dispatched. --defer-spread-s S gives instruction i the retry base base + S * i / N, so the
// retries come due at ~N / (fill time + S) per second rather than at the (flat-out) fill rate.
// --dps D spreads the jobs over D DPs (D x N/D distinct (DP, package) lanes, N/D
// package names); the default, one DP and N package names, is the worst case for memory.
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <map>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "despool/broker/broker.h"
#include "despool/broker/store.h"
#include "despool/common/logging.h"
#include "despool/messages/codec.h"

namespace {

using namespace despool;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

struct Options {
  std::uint64_t instructions = 100'000;
  int publishers = 4;
  int inflight = 64;
  int workers = 4;
  std::uint32_t worker_capacity = 64;
  bool sync_full = true;
  std::string dir;
  double rate = 0;
  // --deferred-scale: every job's first run is deferred (retry after --defer-base), then the
  // broker restarts with all of them pending; reports RSS, restart time and due lateness.
  bool deferred_scale = false;
  bool inline_commits = false;     // --inline-commits: no commit thread (for comparison)
  int wal_max_pages = 0;           // --wal-max-pages N: SqliteOptions::wal_max_pages (0: default)
  int wal_checkpoint_pages = 0;    // --wal-checkpoint-pages N: SqliteOptions::wal_checkpoint_pages (0: default)
  std::uint64_t defer_base_ms = 120'000;
  int dps = 1;                     // --dps (deferred-scale)
  std::uint64_t defer_spread_ms = 0;  // --defer-spread-s: instruction i waits base + spread * i / N
  bool broker_child = false;       // --broker-child: the broker process of --deferred-scale
  bool no_warm = false;            // --no-warm: the broker does not read parked rows ahead (comparison)
  std::string endpoints_file;      // --broker-child: where to write the bound endpoints
  std::string metrics_file;        // --broker-child: where to write the loop metrics at exit
  std::string frontend, backend, events;  // --broker-child: bind these (restart on the same ports)
};

std::string DpName(const Options& o, std::uint64_t i) {
  return o.dps <= 1 ? std::string("bench") : "dp-" + std::to_string(i % static_cast<std::uint64_t>(o.dps));
}
std::vector<std::string> AllDps(const Options& o) {
  std::vector<std::string> out;
  for (int i = 0; i < std::max(1, o.dps); ++i) out.push_back(DpName(o, static_cast<std::uint64_t>(i)));
  return out;
}
// Unique per (DP, package): with D DPs, package i / D.
std::string PackageName(const Options& o, std::uint64_t i) {
  return o.dps <= 1 ? std::string("p").append(std::to_string(i))
                    : "vendor.product-" + std::to_string(i / static_cast<std::uint64_t>(o.dps));
}

std::string Frame(msg::Body body, std::uint64_t id = 0) {
  return msg::Encode(msg::Envelope{msg::kProtocolVersion, id, std::move(body)});
}

std::optional<msg::Envelope> DecodeMsg(const zmq::message_t& m) {
  msg::DecodeLimits l;
  l.max_frame_bytes = 64u << 20;
  auto d = msg::Decode(std::string_view(static_cast<const char*>(m.data()), m.size()), l);
  if (!d.ok()) return std::nullopt;
  return std::move(d.value());
}

// Names the calling thread (15 characters at most), so perf and the CPU table below can tell
// the broker's threads from the bench's.
void NameThread(const char* name) { pthread_setname_np(pthread_self(), name); }

// A bench-side ZeroMQ context whose I/O threads are called "<prefix>/ZMQbg/..." (the broker's
// own context keeps the plain "ZMQbg/..." names).
void PrefixZmqThreads(zmq::context_t& ctx, int prefix) {
  zmq_ctx_set(ctx.handle(), ZMQ_THREAD_NAME_PREFIX, prefix);
}

// CPU time (ns, from /proc/self/task/*/schedstat) of this process's threads, summed by name.
std::map<std::string, std::uint64_t> CpuByThreadName() {
  std::map<std::string, std::uint64_t> out;
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string base = std::string("/proc/self/task/") + e->d_name;
    std::ifstream comm(base + "/comm"), sched(base + "/schedstat");
    std::string name;
    std::uint64_t ns = 0;
    if (std::getline(comm, name) && (sched >> ns)) out[name] += ns;
  }
  ::closedir(d);
  return out;
}

// Prints CPU per instruction by thread between two CpuByThreadName() snapshots: the broker's
// threads (loop, commit, its ZeroMQ I/O thread) and the bench's (publishers, workers, theirs).
void PrintCpuTable(const std::map<std::string, std::uint64_t>& before,
                   const std::map<std::string, std::uint64_t>& after, std::uint64_t instructions) {
  double broker = 0, bench = 0;
  std::string broker_parts, bench_parts;
  for (const auto& [name, ns] : after) {
    auto b = before.find(name);
    const std::uint64_t delta = ns - (b == before.end() ? 0 : b->second);
    const double us = static_cast<double>(delta) / 1e3 / static_cast<double>(instructions);
    if (us < 0.05) continue;
    // The bench's threads: the main thread (publishers), bench-*, and the ZeroMQ threads of the
    // bench's contexts (named with a numeric prefix).
    const bool is_bench = name.rfind("bench", 0) == 0 || name.rfind("broker_bench", 0) == 0 ||
                          (!name.empty() && name[0] >= '0' && name[0] <= '9');
    char part[96];
    std::snprintf(part, sizeof part, " %s %.1f;", name.c_str(), us);
    (is_bench ? bench_parts : broker_parts) += part;
    (is_bench ? bench : broker) += us;
  }
  std::printf("  CPU per instruction by thread (schedstat): broker %.1f us [%s ], bench %.1f us [%s ]\n",
              broker, broker_parts.c_str(), bench, bench_parts.c_str());
}

// 4 workers on one thread: register, heartbeat, answer every dispatch up-to-date at once.
void RunWorkers(const Options& o, const std::string& endpoint, std::atomic<bool>& stop,
                std::atomic<std::uint64_t>& answered) {
  auto reg = [&](int i) {
    return Frame(msg::Register{std::string("bench-").append(std::to_string(i)), AllDps(o), o.worker_capacity});
  };
  NameThread("bench-workers");
  zmq::context_t ctx(1);
  PrefixZmqThreads(ctx, 2);
  std::vector<zmq::socket_t> socks;
  for (int i = 0; i < o.workers; ++i) {
    socks.emplace_back(ctx, zmq::socket_type::dealer);
    socks.back().set(zmq::sockopt::linger, 0);
    socks.back().connect(endpoint);
    socks.back().send(zmq::buffer(reg(i)), zmq::send_flags::none);
  }
  auto last_hb = Clock::now();
  std::vector<zmq_pollitem_t> items(socks.size());
  while (!stop.load(std::memory_order_relaxed)) {
    for (std::size_t i = 0; i < socks.size(); ++i) items[i] = {socks[i].handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(items, 50ms);
    for (std::size_t i = 0; i < socks.size(); ++i) {
      if (!(items[i].revents & ZMQ_POLLIN)) continue;
      zmq::message_t m;
      while (socks[i].recv(m, zmq::recv_flags::dontwait)) {
        auto e = DecodeMsg(m);
        if (!e) continue;
        if (auto* d = std::get_if<msg::Dispatch>(&e->body)) {
          msg::JobResult r;
          r.job_id = d->job_id;
          r.attempt = d->attempt;
          r.outcome = msg::Outcome::kUpToDate;
          r.installed_version = d->version;
          if (o.deferred_scale && d->attempt == 1) {
            r.outcome = msg::Outcome::kDeferred;
            r.installed_version.reset();
            r.in_use = {"bin/tool.exe"};
          }
          socks[i].send(zmq::buffer(Frame(r)), zmq::send_flags::none);
          answered.fetch_add(1, std::memory_order_relaxed);
        }
        if (std::holds_alternative<msg::Disconnect>(e->body)) {
          socks[i].send(zmq::buffer(reg(static_cast<int>(i))), zmq::send_flags::none);
        }
      }
    }
    if (Clock::now() - last_hb > 250ms) {
      for (auto& s : socks) s.send(zmq::buffer(Frame(msg::Heartbeat{})), zmq::send_flags::none);
      last_hb = Clock::now();
    }
  }
}

struct PublisherResult {
  std::vector<double> latencies_us;
  Clock::time_point first_submit{};
  Clock::time_point last_ack{};
  std::uint64_t errors = 0;
};

// P publishers on one thread, each a DEALER with at most K submits outstanding.
void RunPublishers(const Options& o, const std::string& endpoint, PublisherResult& out) {
  zmq::context_t ctx(1);
  PrefixZmqThreads(ctx, 1);
  struct Pub {
    zmq::socket_t sock;
    std::map<std::uint64_t, Clock::time_point> outstanding;
    std::uint64_t next_id = 0;
  };
  std::vector<Pub> pubs;
  for (int i = 0; i < o.publishers; ++i) {
    pubs.push_back(Pub{zmq::socket_t(ctx, zmq::socket_type::dealer), {}, 0});
    pubs.back().sock.set(zmq::sockopt::linger, 0);
    pubs.back().sock.connect(endpoint);
  }
  std::uint64_t submitted = 0, acked = 0;
  out.latencies_us.reserve(o.instructions);
  out.first_submit = Clock::now();
  std::vector<zmq_pollitem_t> items(pubs.size());
  while (acked < o.instructions) {
    // Top up every publisher to K in flight (paced by --rate when given).
    for (std::size_t p = 0; p < pubs.size(); ++p) {
      while (submitted < o.instructions && pubs[p].outstanding.size() < static_cast<std::size_t>(o.inflight)) {
        if (o.rate > 0) {
          const auto due = out.first_submit + std::chrono::microseconds(
                                                  static_cast<std::int64_t>(1e6 * static_cast<double>(submitted) / o.rate));
          if (Clock::now() < due) break;
        }
        msg::SubmitRequest r;
        msg::Instruction in;
        in.package = PackageName(o, submitted);
        in.version = 1;
        in.source = "/srv/src/p/1";
        in.dps = {DpName(o, submitted)};
        if (o.deferred_scale && o.defer_spread_ms > 0) {
          // The first deferral waits exactly the base (the contract's formula for n = 1): a
          // per-instruction base spreads the due times, so retries come due at a steady rate
          // below the fill rate instead of all at the fill rate.
          in.policy.retry_base_ms = o.defer_base_ms + o.defer_spread_ms * submitted / o.instructions;
          in.policy.retry_max_ms = in.policy.retry_base_ms;
        }
        r.instructions.push_back(std::move(in));
        const std::uint64_t id = ++pubs[p].next_id;
        pubs[p].outstanding[id] = Clock::now();
        pubs[p].sock.send(zmq::buffer(Frame(r, id)), zmq::send_flags::none);
        ++submitted;
      }
    }
    for (std::size_t p = 0; p < pubs.size(); ++p) items[p] = {pubs[p].sock.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(items, o.rate > 0 ? 1ms : 100ms);
    for (std::size_t p = 0; p < pubs.size(); ++p) {
      zmq::message_t m;
      while (pubs[p].sock.recv(m, zmq::recv_flags::dontwait)) {
        const auto now = Clock::now();
        auto e = DecodeMsg(m);
        if (!e) continue;
        auto it = pubs[p].outstanding.find(e->request_id);
        if (it == pubs[p].outstanding.end()) continue;
        if (!std::holds_alternative<msg::SubmitReply>(e->body)) ++out.errors;
        out.latencies_us.push_back(std::chrono::duration<double, std::micro>(now - it->second).count());
        pubs[p].outstanding.erase(it);
        ++acked;
        out.last_ack = now;
      }
    }
  }
}

// Asks the broker's stats until `done(stats)` holds; returns when it did.
Clock::time_point WaitStats(const std::string& endpoint, const std::function<bool(const msg::StatsReply&)>& done) {
  zmq::context_t ctx(1);
  PrefixZmqThreads(ctx, 3);
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::linger, 0);
  s.connect(endpoint);
  std::uint64_t id = 0;
  while (true) {
    s.send(zmq::buffer(Frame(msg::StatsRequest{}, ++id)), zmq::send_flags::none);
    zmq::message_t m;
    while (true) {
      if (!s.recv(m)) continue;
      auto e = DecodeMsg(m);
      if (e && e->request_id == id) {
        const auto now = Clock::now();
        if (auto* st = std::get_if<msg::StatsReply>(&e->body)) {
          if (done(*st)) return now;
        }
        break;
      }
    }
    std::this_thread::sleep_for(5ms);
  }
}

Clock::time_point WaitAllTerminal(const std::string& endpoint, std::uint64_t n) {
  return WaitStats(endpoint, [n](const msg::StatsReply& st) {
    std::uint64_t done = 0;
    for (const auto& c : st.jobs_by_state) {
      if (msg::IsTerminal(c.state)) done += c.count;
    }
    return done >= n;
  });
}

// A broker on its own thread, stopped through a pipe.
class RunningBroker {
 public:
  Status Start(const broker::BrokerSettings& s) {
    auto store = broker::OpenSqliteStore(s.store_path, s.store);
    if (!store.ok()) return store.take_error();
    pragmas = (*store)->Describe();
    writer = store->get();
    auto reader = broker::OpenSqliteStore(s.store_path, s.store);
    if (!reader.ok()) return reader.take_error();
    b = std::make_unique<broker::Broker>(s, std::move(store).value(), std::move(reader).value());
    DESPOOL_RETURN_IF_ERROR(b->Start());
    if (::pipe(pipe_) != 0) return MakeError(ErrorCode::kIo, "pipe");
    thread_ = std::thread([this] {
      NameThread("broker-loop");
      status = b->Run(pipe_[0]);
    });
    return Status::Ok();
  }
  void Stop() {
    if (!thread_.joinable()) return;
    if (::write(pipe_[1], "x", 1) != 1) std::abort();
    thread_.join();
    ::close(pipe_[0]);
    ::close(pipe_[1]);
  }
  ~RunningBroker() { Stop(); }

  std::unique_ptr<broker::Broker> b;
  std::vector<std::string> pragmas;
  broker::Store* writer = nullptr;  // owned by b; Activity() once stopped
  Status status;

 private:
  int pipe_[2] = {-1, -1};
  std::thread thread_;
};

// --broker-child: the broker of --deferred-scale in its own process. Runs until its stdin
// closes (the parent's stop), then writes its loop metrics as key=value lines.
int BrokerChild(const Options& o, broker::BrokerSettings s) {
  const auto t0 = Clock::now();
  s.core.default_policy.retry_base_ms = o.defer_base_ms;
  s.core.default_policy.retry_max_ms = o.defer_base_ms;
  if (!o.frontend.empty()) s.frontend = o.frontend;
  if (!o.backend.empty()) s.backend = o.backend;
  if (!o.events.empty()) s.events = o.events;
  s.endpoints_file = o.endpoints_file;
  if (o.no_warm) s.warm_ahead_ms = 0;
  RunningBroker b;
  if (Status st = b.Start(s); !st.ok()) {
    std::fprintf(stderr, "broker child: %s\n", st.error().message.c_str());
    return 1;
  }
  const double start_s = std::chrono::duration<double>(Clock::now() - t0).count();
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  b.Stop();
  const auto m = b.b->metrics();
  std::ofstream f(o.metrics_file + ".tmp", std::ios::trunc);
  f << "start_s=" << start_s << "\nactive_jobs=" << m.active_jobs << "\ndue_retries=" << m.due_retries
    << "\nqueued_p50=" << m.due_lateness_p50_ms << "\nqueued_p99=" << m.due_lateness_p99_ms
    << "\nqueued_max=" << m.due_lateness_max_ms << "\ndispatched=" << m.due_dispatched
    << "\ndispatched_p50=" << m.due_dispatch_p50_ms << "\ndispatched_p99=" << m.due_dispatch_p99_ms
    << "\ndispatched_max=" << m.due_dispatch_max_ms << "\nloop_cpu_s=" << static_cast<double>(m.loop_cpu_ns) / 1e9
    << "\ncommit_cpu_s=" << static_cast<double>(m.commit_cpu_ns) / 1e9 << "\nrounds=" << m.rounds
    << "\ncommits=" << m.commits << "\nok=" << (b.status.ok() ? 1 : 0) << "\n";
  for (const auto& a : b.writer->Activity()) f << "store: " << a << "\n";
  f.close();
  std::filesystem::rename(o.metrics_file + ".tmp", o.metrics_file);
  return b.status.ok() ? 0 : 1;
}

// The broker child process as seen from the bench: its pid, the pipe that stops it, its files.
class BrokerProcess {
 public:
  BrokerProcess(const Options& o, int n, const std::string& frontend, const std::string& backend,
                const std::string& events)
      : endpoints_(o.dir + "/endpoints-" + std::to_string(n)), metrics_(o.dir + "/metrics-" + std::to_string(n)) {
    std::vector<std::string> argv = {"/proc/self/exe", "--broker-child", "--dir", o.dir,
                                     "--defer-base-ms", std::to_string(o.defer_base_ms),
                                     "--dps", std::to_string(o.dps), "--sync", o.sync_full ? "full" : "normal",
                                     "--endpoints-file", endpoints_, "--metrics-file", metrics_};
    if (!frontend.empty()) {
      argv.insert(argv.end(), {"--frontend", frontend, "--backend", backend, "--events", events});
    }
    if (o.inline_commits) argv.push_back("--inline-commits");
    if (o.no_warm) argv.push_back("--no-warm");
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
    started_ = Clock::now();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::dup2(p[0], 0);
      ::close(p[0]);
      ::close(p[1]);
      ::execv("/proc/self/exe", args.data());
      ::_exit(127);
    }
    ::close(p[0]);
    stop_fd_ = p[1];
  }
  ~BrokerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (stop_fd_ >= 0) ::close(stop_fd_);
  }

  // Waits for the endpoints file (written once bound); false if the child died first.
  bool WaitBound(std::string* frontend, std::string* backend, std::string* events) {
    while (true) {
      std::ifstream f(endpoints_);
      std::string line;
      while (std::getline(f, line)) {
        if (line.rfind("frontend=", 0) == 0) *frontend = line.substr(9);
        if (line.rfind("backend=", 0) == 0) *backend = line.substr(8);
        if (line.rfind("events=", 0) == 0) *events = line.substr(7);
      }
      if (!frontend->empty() && !backend->empty() && !events->empty()) {
        bound_ = Clock::now();
        return true;
      }
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(2ms);
    }
  }
  double StartSeconds() const { return std::chrono::duration<double>(bound_ - started_).count(); }
  std::string store_activity;  // the writer's Activity() lines, after Stop

  // VmRSS / VmHWM of the broker process in MiB.
  std::pair<double, double> RssMiB() const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    double rss = 0, hwm = 0;
    while (std::getline(f, line)) {
      if (line.rfind("VmRSS:", 0) == 0) rss = std::stod(line.substr(6)) / 1024.0;
      if (line.rfind("VmHWM:", 0) == 0) hwm = std::stod(line.substr(6)) / 1024.0;
    }
    return {rss, hwm};
  }

  // Stops the broker (drain, commit, exit) and returns its metrics.
  std::map<std::string, double> Stop() {
    ::close(stop_fd_);
    stop_fd_ = -1;
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    std::map<std::string, double> m;
    std::ifstream f(metrics_);
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("store: ", 0) == 0) {
        store_activity += line.substr(7) + "; ";
        continue;
      }
      const auto eq = line.find('=');
      if (eq != std::string::npos) m[line.substr(0, eq)] = std::stod(line.substr(eq + 1));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) m["ok"] = 0;
    return m;
  }

 private:
  std::string endpoints_, metrics_;
  pid_t pid_ = -1;
  int stop_fd_ = -1;
  Clock::time_point started_{}, bound_{};
};

int DeferredScale(Options o) {
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  const double load_before = load[0];
  std::string fe, be, ev;
  auto first = std::make_unique<BrokerProcess>(o, 1, "", "", "");
  if (!first->WaitBound(&fe, &be, &ev)) {
    std::fprintf(stderr, "broker did not start\n");
    return 1;
  }
  const auto [rss0, hwm0] = first->RssMiB();
  std::atomic<bool> stop_workers{false};
  std::atomic<std::uint64_t> answered{0};
  std::thread workers([&] { RunWorkers(o, be, stop_workers, answered); });
  PublisherResult pr;
  RunPublishers(o, fe, pr);
  const auto all_deferred = WaitStats(fe, [&](const msg::StatsReply& st) { return st.retry_backlog >= o.instructions; });
  const double fill_s = std::chrono::duration<double>(all_deferred - pr.first_submit).count();
  const auto [rss1, hwm1] = first->RssMiB();
  const auto m1 = first->Stop();
  first.reset();
  // Restart on the same store and the same endpoints (the workers reconnect and re-register).
  BrokerProcess second(o, 2, fe, be, ev);
  std::string fe2, be2, ev2;
  if (!second.WaitBound(&fe2, &be2, &ev2)) {
    std::fprintf(stderr, "broker did not restart\n");
    return 1;
  }
  const double restart_s = second.StartSeconds();
  const auto [rss2, hwm2] = second.RssMiB();
  const auto retries_from = Clock::now();
  WaitAllTerminal(fe, o.instructions);
  const double retries_s = std::chrono::duration<double>(Clock::now() - retries_from).count();
  const auto [rss3, hwm3] = second.RssMiB();
  stop_workers = true;
  workers.join();
  const auto m2 = second.Stop();
  getloadavg(load, 3);
  auto g = [](const std::map<std::string, double>& m, const char* k) {
    auto it = m.find(k);
    return it == m.end() ? -1.0 : it->second;
  };
  std::printf("broker_bench --deferred-scale: %llu jobs (%d DP%s, %llu package names) deferred once (retry after "
              "%.0f s), then up-to-date; synchronous=%s\n",
              static_cast<unsigned long long>(o.instructions), o.dps, o.dps > 1 ? "s" : "",
              static_cast<unsigned long long>(o.dps > 1 ? (o.instructions + static_cast<std::uint64_t>(o.dps) - 1) /
                                                              static_cast<std::uint64_t>(o.dps)
                                                        : o.instructions),
              static_cast<double>(o.defer_base_ms) / 1000.0, o.sync_full ? "FULL" : "NORMAL");
  std::printf("  created and deferred through the frontend/backend in %.1f s (%.0f jobs/s)\n", fill_s,
              static_cast<double>(o.instructions) / fill_s);
  std::printf("  broker RSS empty %.0f MiB; with all deferred: %.0f MiB (peak %.0f MiB); broker holds %.0f active jobs\n",
              rss0, rss1, hwm1, g(m1, "active_jobs"));
  std::printf("  restart (exec, open store, load, rebuild timers, bind): %.2f s (in the broker: %.2f s); RSS after "
              "restart %.0f MiB (peak %.0f); after the retries %.0f MiB (peak %.0f)\n",
              restart_s, g(m2, "start_s"), rss2, hwm2, rss3, hwm3);
  std::printf("  due times spread over ~%.0f s (fill + %.0f s spread): ~%.0f retries due per second\n",
              fill_s + static_cast<double>(o.defer_spread_ms) / 1000.0, static_cast<double>(o.defer_spread_ms) / 1000.0,
              static_cast<double>(o.instructions) / (fill_s + static_cast<double>(o.defer_spread_ms) / 1000.0));
  // The histograms have 1 ms buckets up to 1 s; quantiles beyond read ">=1000" (max is exact).
  auto q = [&](const char* k) {
    const double v = g(m2, k);
    return v >= 1000 ? std::string(">=1000") : std::to_string(static_cast<long long>(v));
  };
  std::printf("  due retries after restart: %.0f in %.1f s; lateness p50 %s ms, p99 %s ms, max %.0f ms "
              "(due -> queued); due -> dispatched (%.0f): p50 %s ms, p99 %s ms, max %.0f ms\n",
              g(m2, "due_retries"), retries_s, q("queued_p50").c_str(), q("queued_p99").c_str(), g(m2, "queued_max"),
              g(m2, "dispatched"), q("dispatched_p50").c_str(), q("dispatched_p99").c_str(), g(m2, "dispatched_max"));
  std::printf("  broker CPU: fill %.1f s loop + %.1f s commits; retries %.1f s loop + %.1f s commits\n",
              g(m1, "loop_cpu_s"), g(m1, "commit_cpu_s"), g(m2, "loop_cpu_s"), g(m2, "commit_cpu_s"));
  std::printf("  store during the retries: %s\n", second.store_activity.c_str());
  std::printf("  machine load average (1 min): %.2f at the start, %.2f at the end\n", load_before, load[0]);
  return g(m1, "ok") == 1 && g(m2, "ok") == 1 ? 0 : 1;
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t i = std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--instructions") o.instructions = std::stoull(next());
    else if (a == "--publishers") o.publishers = std::stoi(next());
    else if (a == "--inflight") o.inflight = std::stoi(next());
    else if (a == "--workers") o.workers = std::stoi(next());
    else if (a == "--capacity") o.worker_capacity = static_cast<std::uint32_t>(std::stoul(next()));
    else if (a == "--sync") o.sync_full = next() != "normal";
    else if (a == "--dir") o.dir = next();
    else if (a == "--rate") o.rate = std::stod(next());
    else if (a == "--deferred-scale") o.deferred_scale = true;
    else if (a == "--inline-commits") o.inline_commits = true;
    else if (a == "--wal-max-pages") o.wal_max_pages = std::stoi(next());
    else if (a == "--wal-checkpoint-pages") o.wal_checkpoint_pages = std::stoi(next());
    else if (a == "--defer-base-s") o.defer_base_ms = std::stoull(next()) * 1000;
    else if (a == "--defer-base-ms") o.defer_base_ms = std::stoull(next());
    else if (a == "--defer-spread-s") o.defer_spread_ms = std::stoull(next()) * 1000;
    else if (a == "--dps") o.dps = std::max(1, std::stoi(next()));
    else if (a == "--broker-child") o.broker_child = true;
    else if (a == "--no-warm") o.no_warm = true;
    else if (a == "--endpoints-file") o.endpoints_file = next();
    else if (a == "--metrics-file") o.metrics_file = next();
    else if (a == "--frontend") o.frontend = next();
    else if (a == "--backend") o.backend = next();
    else if (a == "--events") o.events = next();
    else {
      std::fprintf(stderr, "usage: %s [--instructions N] [--publishers P] [--inflight K] [--workers W] "
                           "[--capacity C] [--sync full|normal] [--dir DIR] [--rate R] [--inline-commits] [--wal-max-pages N] [--wal-checkpoint-pages N] [--deferred-scale [--defer-base-s S] "
                           "[--defer-spread-s S] [--dps D] [--no-warm]]\n",
                   argv[0]);
      return 2;
    }
  }
  const bool own_dir = o.dir.empty();
  if (own_dir) {
    char tmpl[] = "/tmp/despool-broker-bench-XXXXXX";
    if (!::mkdtemp(tmpl)) return 1;
    o.dir = tmpl;
  }
  LogOptions lo;
  lo.level = spdlog::level::warn;
  (void)SetupLogging(lo);

  broker::BrokerSettings s;
  s.frontend = "tcp://127.0.0.1:*";
  s.backend = "tcp://127.0.0.1:*";
  s.events = "tcp://127.0.0.1:*";
  s.store_path = o.dir + "/broker.db";
  s.store.sync = o.sync_full ? broker::SyncMode::kFull : broker::SyncMode::kNormal;
  if (o.wal_max_pages > 0) s.store.wal_max_pages = o.wal_max_pages;
  if (o.wal_checkpoint_pages > 0) s.store.wal_checkpoint_pages = o.wal_checkpoint_pages;
  s.core.dps = AllDps(o);
  if (o.broker_child) return BrokerChild(o, s);
  if (o.deferred_scale) {
    const int rc = DeferredScale(o);
    if (own_dir) {
      std::error_code ec;
      std::filesystem::remove_all(o.dir, ec);
    }
    return rc;
  }
  auto store = broker::OpenSqliteStore(s.store_path, s.store);
  if (!store.ok()) {
    std::fprintf(stderr, "store: %s\n", store.error().message.c_str());
    return 1;
  }
  const auto pragmas = (*store)->Describe();
  broker::Store* writer = store->get();  // owned by the broker below; read once it stopped
  std::unique_ptr<broker::Store> reader;
  if (!o.inline_commits) {
    auto r = broker::OpenSqliteStore(s.store_path, s.store);
    if (!r.ok()) return 1;
    reader = std::move(r).value();
  }
  broker::Broker b(s, std::move(store).value(), std::move(reader));
  if (Status st = b.Start(); !st.ok()) {
    std::fprintf(stderr, "start: %s\n", st.error().message.c_str());
    return 1;
  }
  int stop_pipe[2];
  if (::pipe(stop_pipe) != 0) return 1;
  Status run_status;
  NameThread("bench-pubs");
  std::thread broker_thread([&] {
    NameThread("broker-loop");
    run_status = b.Run(stop_pipe[0]);
  });

  std::atomic<bool> stop_workers{false};
  std::atomic<std::uint64_t> answered{0};
  std::thread workers([&] { RunWorkers(o, b.endpoints().backend, stop_workers, answered); });
  // Let the workers register before the clock starts (their registration is not measured).
  {
    zmq::context_t ctx(1);
    PrefixZmqThreads(ctx, 3);
    zmq::socket_t c(ctx, zmq::socket_type::dealer);
    c.set(zmq::sockopt::linger, 0);
    c.connect(b.endpoints().frontend);
    for (std::uint64_t id = 1;; ++id) {
      c.send(zmq::buffer(Frame(msg::WorkersRequest{}, id)), zmq::send_flags::none);
      zmq::message_t m;
      if (!c.recv(m)) continue;
      auto e = DecodeMsg(m);
      if (e && std::holds_alternative<msg::WorkersReply>(e->body) &&
          std::get<msg::WorkersReply>(e->body).workers.size() == static_cast<std::size_t>(o.workers)) {
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
  }

  PublisherResult pr;
  const auto cpu_before = CpuByThreadName();
  RunPublishers(o, b.endpoints().frontend, pr);
  const auto all_done = WaitAllTerminal(b.endpoints().frontend, o.instructions);
  const auto cpu_after = CpuByThreadName();
  stop_workers = true;
  workers.join();
  if (::write(stop_pipe[1], "x", 1) != 1) return 1;
  broker_thread.join();
  ::close(stop_pipe[0]);
  ::close(stop_pipe[1]);

  const double secs = std::chrono::duration<double>(all_done - pr.first_submit).count();
  const double ack_secs = std::chrono::duration<double>(pr.last_ack - pr.first_submit).count();
  const auto m = b.metrics();
  std::printf("broker_bench: %llu instructions, %d publishers x %d in flight, %d workers (capacity %u), "
              "synchronous=%s, %s commits%s\n",
              static_cast<unsigned long long>(o.instructions), o.publishers, o.inflight, o.workers,
              o.worker_capacity, o.sync_full ? "FULL" : "NORMAL", o.inline_commits ? "inline" : "pipelined",
              o.rate > 0 ? (", paced at " + std::to_string(static_cast<long>(o.rate)) + "/s").c_str() : "");
  std::printf("  SQLite:");
  for (const auto& p : pragmas) std::printf(" %s;", p.c_str());
  std::printf("\n");
  std::printf("  end to end (first submit -> last job terminal & committed): %.3f s = %.0f instructions/s\n", secs,
              static_cast<double>(o.instructions) / secs);
  std::printf("  submits acknowledged (durable): %.3f s = %.0f acks/s, errors %llu\n", ack_secs,
              static_cast<double>(o.instructions) / ack_secs, static_cast<unsigned long long>(pr.errors));
  auto lat = pr.latencies_us;
  std::printf("  submit->ack latency: p50 %.0f us, p90 %.0f us, p99 %.0f us, max %.0f us\n", Percentile(lat, 0.50),
              Percentile(lat, 0.90), Percentile(lat, 0.99), Percentile(lat, 1.0));
  const double total_ns = static_cast<double>(m.read_ns + m.tick_ns + m.commit_ns + m.send_ns + m.poll_ns);
  auto pct = [&](std::uint64_t v) { return total_ns > 0 ? 100.0 * static_cast<double>(v) / total_ns : 0.0; };
  std::printf("  broker loop: %llu rounds, %llu messages (max %llu per round), %llu commits (%.1f messages, "
              "%.1f job rows per commit)\n",
              static_cast<unsigned long long>(m.rounds), static_cast<unsigned long long>(m.messages),
              static_cast<unsigned long long>(m.max_round_messages), static_cast<unsigned long long>(m.commits),
              m.commits ? static_cast<double>(m.messages) / static_cast<double>(m.commits) : 0.0,
              m.commits ? static_cast<double>(m.committed_jobs) / static_cast<double>(m.commits) : 0.0);
  std::printf("  loop time: read+decode+core %.1f%%, timers+dispatch %.1f%%, commit(+fsync) %.1f%%, "
              "encode+send %.1f%%, idle in poll %.1f%%; mean commit %.0f us (%.0f us of it on CPU)\n",
              pct(m.read_ns), pct(m.tick_ns), pct(m.commit_ns), pct(m.send_ns), pct(m.poll_ns),
              m.commits ? static_cast<double>(m.commit_ns) / 1000.0 / static_cast<double>(m.commits) : 0.0,
              m.commits ? static_cast<double>(m.commit_cpu_ns) / 1000.0 / static_cast<double>(m.commits) : 0.0);
  const double broker_cpu_s =
      static_cast<double>(m.loop_cpu_ns + (m.commit_thread ? m.commit_cpu_ns : 0)) / 1e9;
  std::printf("  broker CPU: %.2f s for %llu instructions = %.1f us per instruction (of it in commits: %.1f us) "
              "=> one dedicated core would sustain ~%.0f instructions/s before fsync waits\n",
              broker_cpu_s, static_cast<unsigned long long>(o.instructions),
              1e6 * broker_cpu_s / static_cast<double>(o.instructions),
              static_cast<double>(m.commit_cpu_ns) / 1e3 / static_cast<double>(o.instructions),
              static_cast<double>(o.instructions) / broker_cpu_s);
  std::printf("  inside the broker: submit read -> ack sent p50 %llu us, p99 %llu us, max %llu us; "
              "commit wall time (incl. fsync) p50 %llu us, p99 %llu us, max %llu us\n",
              static_cast<unsigned long long>(m.submit_ack_p50_us), static_cast<unsigned long long>(m.submit_ack_p99_us),
              static_cast<unsigned long long>(m.submit_ack_max_us), static_cast<unsigned long long>(m.commit_p50_us),
              static_cast<unsigned long long>(m.commit_p99_us), static_cast<unsigned long long>(m.commit_max_us));
  PrintCpuTable(cpu_before, cpu_after, o.instructions);
  std::printf("  store:");
  for (const auto& a : writer->Activity()) std::printf(" %s;", a.c_str());
  std::printf("\n");
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) == 3) std::printf("  machine load average (1 min) at the end: %.2f\n", load[0]);
  if (!run_status.ok()) std::printf("  broker stopped with error: %s\n", run_status.error().message.c_str());
  if (own_dir) {
    std::error_code ec;
    std::filesystem::remove_all(o.dir, ec);
  }
  return run_status.ok() && pr.errors == 0 ? 0 : 1;
}
