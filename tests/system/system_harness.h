// System-test harness (issue 8): the real despool-broker, despool-worker and despoolctl on
// loopback, plus the observers that check the product's four invariants while faults happen:
//
//   (1) every live package directory is always one complete version — TreeValidator, a thread of
//       stat-only scans (opening files would itself make them "in use");
//   (2) a file a reader holds is never replaced — Reader: a HolderProcess whose held inode is
//       checked against the live path when it is released (deferred, then retried);
//   (3) every acknowledged job ends applied / superseded / up-to-date as its version says —
//       CheckOutcomes over the broker's final job list;
//   (4) bad input is refused and everything keeps serving — HostileClient, a thread that sends
//       garbage to the frontend and the backend for the whole scenario and tallies the replies.
//
// Process handling comes from tests/workers (Process: RAII, SIGKILL + reap in the destructor;
// WaitFor: polling with a deadline; TempDir). Nothing here sleeps to synchronise.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "despool/ctl/client.h"
#include "despool/messages/codec.h"
#include "despool/messages/types.h"
#include "workers/test_holders.h"
#include "workers/worker_harness.h"

namespace despool::systest {

namespace fs = std::filesystem;
using despool::testing::HolderProcess;
using despool::workertest::BinDir;
using despool::workertest::Process;
using despool::workertest::ReadFile;
using despool::workertest::TempDir;
using despool::workertest::WaitFor;
using despool::workertest::WriteFile;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// ---------------------------------------------------------------------------------------------
// Knobs (tests/system/README.md).

inline long EnvLong(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  try {
    return std::stol(v);
  } catch (...) {
    return fallback;
  }
}
// Soak: the scenarios repeat their fault loops until this many seconds passed (0 = one pass).
inline long SoakSeconds() { return EnvLong("DESPOOL_SOAK_SECONDS", 0); }
inline std::uint32_t Seed() {
  static const std::uint32_t seed = static_cast<std::uint32_t>(
      EnvLong("DESPOOL_SYSTEM_SEED", static_cast<long>(std::random_device{}() & 0x7fffffff)));
  return seed;
}

// ---------------------------------------------------------------------------------------------
// The package model: what version V of package P contains. Every file's size depends on the
// version (size = base + 13*V), so a stat-only scan can tell which version each file belongs to;
// content starts with a "P=<pkg> V=<v> F=<path>" marker checked at the end of a scenario.

struct ExpectedEntry {
  bool dir = false;
  std::uint64_t size = 0;
};
using ExpectedTree = std::map<std::string, ExpectedEntry>;

struct PackageShape {
  int data_files = 4;
  std::uint64_t big_bytes = 0;  // > 0: data/f0.dat gets this base size (slow copies)
};

inline ExpectedTree Expected(const std::string& pkg, std::uint64_t v, const PackageShape& shape) {
  ExpectedTree t;
  t["common.txt"] = {false, 64};  // identical in every version: linked, never copied
  t["data"] = {true, 0};
  t["emptydir"] = {true, 0};
  for (int i = 0; i < shape.data_files; ++i) {
    std::uint64_t base = 200 + 37 * static_cast<std::uint64_t>(i) + pkg.size();
    if (i == 0 && shape.big_bytes > 0) base = shape.big_bytes;
    t["data/f" + std::to_string(i) + ".dat"] = {false, base + 13 * v};
  }
  t["only-v" + std::to_string(v) + ".txt"] = {false, 50 + v};
  return t;
}

inline std::string ExpectedContent(const std::string& pkg, std::uint64_t v, const std::string& rel,
                                   std::uint64_t size) {
  std::string head = rel == "common.txt" ? "P=" + pkg + " common\n" : "P=" + pkg + " V=" + std::to_string(v) + " F=" + rel + "\n";
  const std::uint64_t salt = rel == "common.txt" ? 0 : v;
  std::string out = head;
  out.reserve(size);
  while (out.size() < size) out += static_cast<char>('a' + (out.size() * 7 + salt) % 26);
  out.resize(size);
  return out;
}

// Writes (once) the source tree of pkg@v under `root` and returns its path.
inline std::string MakeSourceTree(const std::string& root, const std::string& pkg, std::uint64_t v,
                                  const PackageShape& shape) {
  const std::string dir = root + "/" + pkg + "@" + std::to_string(v);
  if (fs::exists(dir)) return dir;
  for (const auto& [rel, e] : Expected(pkg, v, shape)) {
    if (e.dir) {
      fs::create_directories(dir + "/" + rel);
    } else {
      WriteFile(dir + "/" + rel, ExpectedContent(pkg, v, rel, e.size));
    }
  }
  // common.txt is the same file in every version: same content, mode and mtime (mtimes are
  // carried to the DP, so a different mtime would make it a changed file).
  const timespec fixed[2] = {{1700000000, 0}, {1700000000, 0}};
  ::utimensat(AT_FDCWD, (dir + "/common.txt").c_str(), fixed, 0);
  return dir;
}

// Full content check of a live package (only when no refresh of it can run).
inline std::string CheckLiveContent(const std::string& live, const std::string& pkg, std::uint64_t v,
                                    const PackageShape& shape) {
  const ExpectedTree want = Expected(pkg, v, shape);
  std::set<std::string> seen;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(live, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    const std::string rel = fs::relative(it->path(), live).string();
    seen.insert(rel);
    auto w = want.find(rel);
    if (w == want.end()) return "unexpected entry " + rel;
    if (w->second.dir != it->is_directory()) return "wrong type of " + rel;
    if (!w->second.dir && ReadFile(it->path().string()) != ExpectedContent(pkg, v, rel, w->second.size)) {
      return "wrong content in " + rel;
    }
  }
  if (ec) return "walk " + live + ": " + ec.message();
  for (const auto& [rel, e] : want) {
    if (!seen.count(rel)) return "missing " + rel;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// (1) Stat-only validators.
//
// A scan opens ROOT/<pkg> with O_DIRECTORY, walks it with fstatat/openat (directories only, so
// no file becomes "in use"), and counts only if the path still names the same directory inode,
// with the same ctime, afterwards (a swap during the scan moves the opened tree away; ext4 and
// tmpfs update ctime on RENAME_EXCHANGE, so even a swap away and back is noticed). A counted scan
// must match exactly one version's ExpectedTree — never empty, partial or mixed — and a package's
// versions may only grow over time; a package once present never disappears.

class TreeValidator {
 public:
  struct Target {
    std::string dp;
    std::string root;
    std::string pkg;
    std::uint64_t max_version = 3;
  };

  TreeValidator(std::vector<Target> targets, PackageShape shape) : targets_(std::move(targets)), shape_(shape) {
    state_.resize(targets_.size());
    for (std::size_t i = 0; i < targets_.size(); ++i) {
      for (std::uint64_t v = 1; v <= targets_[i].max_version; ++v) {
        state_[i].expected[v] = Expected(targets_[i].pkg, v, shape_);
      }
    }
    thread_ = std::thread([this] { Loop(); });
  }
  ~TreeValidator() { Stop(); }
  TreeValidator(const TreeValidator&) = delete;
  TreeValidator& operator=(const TreeValidator&) = delete;

  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  // Waits until every target had a counted scan after this call (so the final state was seen).
  bool WaitForFreshScans(milliseconds within) {
    const std::uint64_t mark = rounds_.load();
    return WaitFor([&] { return rounds_.load() >= mark + 2; }, within);
  }

  std::vector<std::string> violations() const {
    std::lock_guard<std::mutex> l(mu_);
    return violations_;
  }
  std::uint64_t counted_scans() const { return counted_.load(); }
  std::uint64_t discarded_scans() const { return discarded_.load(); }
  // The version the last counted scan saw (0 = absent).
  std::uint64_t last_version(std::size_t target) const {
    std::lock_guard<std::mutex> l(mu_);
    return state_[target].last;
  }

 private:
  struct State {
    std::map<std::uint64_t, ExpectedTree> expected;
    std::uint64_t last = 0;
    bool present_once = false;
  };

  void Violation(const std::string& what) {
    std::lock_guard<std::mutex> l(mu_);
    if (violations_.size() < 50) violations_.push_back(what);
  }

  void Loop() {
    while (!stop_) {
      for (std::size_t i = 0; i < targets_.size() && !stop_; ++i) ScanOne(i);
      ++rounds_;
      // Pacing so the validator leaves CPU to the processes under test (2 shared cores).
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
  }

  // Walks `dfd` (relative prefix `rel`) into `out`; false when something vanished mid-walk.
  static bool Walk(int dfd, const std::string& rel, std::map<std::string, ExpectedEntry>& out, std::string& odd) {
    const int lfd = ::dup(dfd);
    if (lfd < 0) return false;
    DIR* d = ::fdopendir(lfd);
    if (d == nullptr) {
      ::close(lfd);
      return false;
    }
    bool ok = true;
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      struct stat st;
      if (::fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        ok = false;
        break;
      }
      const std::string path = rel.empty() ? name : rel + "/" + name;
      if (S_ISDIR(st.st_mode)) {
        out[path] = {true, 0};
        const int sub = ::openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0 || !Walk(sub, path, out, odd)) {
          if (sub >= 0) ::close(sub);
          ok = false;
          break;
        }
        ::close(sub);
      } else if (S_ISREG(st.st_mode)) {
        out[path] = {false, static_cast<std::uint64_t>(st.st_size)};
      } else {
        odd = "unexpected file type at " + path;
        out[path] = {false, ~0ull};
      }
    }
    ::closedir(d);
    return ok;
  }

  void ScanOne(std::size_t i) {
    const Target& t = targets_[i];
    State& s = state_[i];
    const int rfd = ::open(t.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0) return;
    const int fd = ::openat(rfd, t.pkg.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      const int err = errno;
      ::close(rfd);
      if (err == ENOENT && s.present_once) Violation(t.dp + "/" + t.pkg + ": live directory disappeared");
      if (err != ENOENT) Violation(t.dp + "/" + t.pkg + ": open failed: " + std::strerror(err));
      return;
    }
    struct stat before, after_fd, after_path;
    std::map<std::string, ExpectedEntry> seen;
    std::string odd;
    const bool walked = ::fstat(fd, &before) == 0 && Walk(fd, "", seen, odd);
    const bool same = walked && ::fstat(fd, &after_fd) == 0 &&
                      ::fstatat(rfd, t.pkg.c_str(), &after_path, AT_SYMLINK_NOFOLLOW) == 0 &&
                      after_path.st_ino == before.st_ino && after_path.st_dev == before.st_dev &&
                      after_fd.st_ctim.tv_sec == before.st_ctim.tv_sec &&
                      after_fd.st_ctim.tv_nsec == before.st_ctim.tv_nsec;
    ::close(fd);
    ::close(rfd);
    if (!same) {
      ++discarded_;
      return;
    }
    ++counted_;
    std::uint64_t matched = 0;
    for (const auto& [v, want] : s.expected) {
      if (want.size() != seen.size()) continue;
      bool eq = true;
      for (const auto& [rel, e] : want) {
        auto it = seen.find(rel);
        if (it == seen.end() || it->second.dir != e.dir || (!e.dir && it->second.size != e.size)) {
          eq = false;
          break;
        }
      }
      if (eq) {
        matched = v;
        break;
      }
    }
    std::lock_guard<std::mutex> l(mu_);
    if (matched == 0) {
      std::string listing;
      for (const auto& [rel, e] : seen) listing += " " + rel + (e.dir ? "/" : ":" + std::to_string(e.size));
      if (violations_.size() < 50) {
        violations_.push_back(t.dp + "/" + t.pkg + ": bad tree (" + (seen.empty() ? "empty" : "no single version") +
                              (odd.empty() ? "" : ", " + odd) + "):" + listing);
      }
      return;
    }
    if (matched < s.last && violations_.size() < 50) {
      violations_.push_back(t.dp + "/" + t.pkg + ": version went back from " + std::to_string(s.last) + " to " +
                            std::to_string(matched));
    }
    s.last = matched;
    s.present_once = true;
  }

  std::vector<Target> targets_;
  PackageShape shape_;
  std::vector<State> state_;
  mutable std::mutex mu_;
  std::vector<std::string> violations_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> rounds_{0}, counted_{0}, discarded_{0};
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// (2) Readers: a process holding one live file open (or mapped). held_live() says whether the
// held inode was the live one when the hold began; ReleaseAndCheck() returns "" when the live
// path still names that inode (it was never replaced while held), then releases the file.

class Reader {
 public:
  Reader(const std::string& live_file, HolderProcess::Mode mode)
      : path_(live_file), holder_(std::make_unique<HolderProcess>(mode, live_file)) {
    if (!holder_->ready()) return;
    struct stat st;
    if (::stat(path_.c_str(), &st) != 0) return;
    ino_ = st.st_ino;
    dev_ = st.st_dev;
    // Which inode does the child really hold? Its descriptors, or its mappings (kMmap).
    const std::string proc = "/proc/" + std::to_string(holder_->pid());
    for (const char* sub : {"/fd", "/map_files"}) {
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(proc + sub, ec)) {
        struct stat h;
        if (::stat(e.path().c_str(), &h) == 0 && h.st_ino == ino_ && h.st_dev == dev_) held_live_ = true;
      }
    }
  }
  bool ready() const { return holder_ && holder_->ready(); }
  std::string error() const { return holder_ ? holder_->error() : "no holder"; }
  bool held_live() const { return held_live_; }
  const std::string& path() const { return path_; }

  std::string ReleaseAndCheck() {
    struct stat st;
    std::string problem;
    if (::stat(path_.c_str(), &st) != 0) {
      problem = path_ + " vanished while held";
    } else if (st.st_ino != ino_ || st.st_dev != dev_) {
      problem = path_ + " was replaced while a reader held it";
    }
    holder_->Stop();
    return problem;
  }

 private:
  std::string path_;
  std::unique_ptr<HolderProcess> holder_;
  ino_t ino_ = 0;
  dev_t dev_ = 0;
  bool held_live_ = false;
};

// ---------------------------------------------------------------------------------------------
// (4) Hostile clients: one thread, its own context, cycling through attacks on the frontend and
// the backend until stopped. Every attack that deserves an error reply must get one of the right
// kind (when the broker is up); peers sending over-cap or too-many-frame messages get dropped.

class HostileClient {
 public:
  struct Tally {
    std::uint64_t sent = 0;
    std::uint64_t error_replies = 0;     // error replies of the expected kind
    std::uint64_t wrong_replies = 0;     // a reply that was not the expected error
    std::uint64_t no_reply = 0;          // timeouts (expected while the broker is down)
    std::vector<std::string> wrong;      // first few wrong replies
  };

  HostileClient(std::function<std::pair<std::string, std::string>()> endpoints, std::uint32_t seed,
                milliseconds pause = milliseconds(20))
      : endpoints_(std::move(endpoints)), rng_(seed), pause_(pause) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~HostileClient() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  Tally tally() const {
    std::lock_guard<std::mutex> l(mu_);
    return tally_;
  }

  // One frame that must draw an error reply of `kind` from the frontend.
  struct Attack {
    std::string name;
    std::string frame;
    msg::ErrorKind kind;
  };
  static std::vector<Attack> FrontendAttacks() {
    std::vector<Attack> a;
    a.push_back({"garbage", "\xc1\xff\x00garbage", msg::ErrorKind::kBadRequest});
    a.push_back({"truncated-map", std::string("\x85\xa1v\x01", 4), msg::ErrorKind::kBadRequest});
    a.push_back({"huge-array-header", std::string("\xdd\xff\xff\xff\xff", 5), msg::ErrorKind::kTooLarge});
    a.push_back({"oversized", std::string((4u << 20) + 100, 'x'), msg::ErrorKind::kTooLarge});
    {
      msg::Envelope e{msg::kProtocolVersion, 77, msg::Heartbeat{}};  // a backend type on the frontend
      a.push_back({"backend-type-on-frontend", msg::Encode(e), msg::ErrorKind::kUnknownType});
    }
    {
      msg::Envelope e{99, 78, msg::StatsRequest{}};
      a.push_back({"bad-version", msg::Encode(e), msg::ErrorKind::kUnsupportedVersion});
    }
    {
      msg::SubmitRequest r;
      msg::Instruction in;
      in.package = "../../etc";
      in.version = 1;
      in.source = "/tmp/x";
      in.dps = {"lab1"};
      r.instructions.push_back(in);
      a.push_back({"escaping-package", msg::Encode(msg::Envelope{msg::kProtocolVersion, 79, r}),
                   msg::ErrorKind::kBadRequest});
      r.instructions[0].package = "ok";
      r.instructions[0].source = "/srv/../../etc";
      a.push_back({"escaping-source", msg::Encode(msg::Envelope{msg::kProtocolVersion, 80, r}),
                   msg::ErrorKind::kBadRequest});
      r.instructions[0].source = "/srv/x";
      r.instructions[0].dps = {"no-such-dp-anywhere"};
      a.push_back({"unknown-dp", msg::Encode(msg::Envelope{msg::kProtocolVersion, 81, r}),
                   msg::ErrorKind::kUnknownDp});
    }
    return a;
  }

 private:
  void Loop() {
    zmq::context_t ctx(1);
    const auto attacks = FrontendAttacks();
    std::uint64_t round = 0;
    while (!stop_) {
      ++round;
      const auto [frontend, backend] = endpoints_();
      try {
        // Frontend: a fresh DEALER per attack, so a dropped connection never blocks the next one.
        const Attack& at = attacks[rng_() % attacks.size()];
        zmq::socket_t s(ctx, zmq::socket_type::dealer);
        s.set(zmq::sockopt::linger, 0);
        s.connect(frontend);
        s.send(zmq::buffer(at.frame), zmq::send_flags::none);
        Count([](Tally& t) { ++t.sent; });
        std::vector<zmq_pollitem_t> items{{s.handle(), 0, ZMQ_POLLIN, 0}};
        zmq::poll(items, milliseconds(2000));
        zmq::message_t m;
        if ((items[0].revents & ZMQ_POLLIN) && s.recv(m, zmq::recv_flags::dontwait)) {
          auto d = msg::Decode(std::string_view(static_cast<const char*>(m.data()), m.size()));
          const auto* err = d.ok() ? std::get_if<msg::ErrorReply>(&d.value().body) : nullptr;
          if (err != nullptr && err->kind == at.kind) {
            Count([](Tally& t) { ++t.error_replies; });
          } else {
            std::string what = at.name + ": " + (err ? std::string(msg::ToString(err->kind)) + " " + err->message
                                                     : std::string("not an error reply"));
            Count([&](Tally& t) {
              ++t.wrong_replies;
              if (t.wrong.size() < 10) t.wrong.push_back(what);
            });
          }
        } else {
          Count([](Tally& t) { ++t.no_reply; });
        }
        // Backend: garbage, a bogus registration, a result for a job that does not exist, too
        // many frames. None may disturb the real workers.
        zmq::socket_t b(ctx, zmq::socket_type::dealer);
        b.set(zmq::sockopt::linger, 0);
        b.connect(backend);
        switch (round % 4) {
          case 0:
            b.send(zmq::str_buffer("\x93\xc1garbage"), zmq::send_flags::none);
            break;
          case 1: {
            msg::Register r{"bad\nname", {"../dp"}, 0};
            b.send(zmq::buffer(msg::Encode(msg::Envelope{msg::kProtocolVersion, 0, r})), zmq::send_flags::none);
            break;
          }
          case 2: {
            msg::JobResult r;
            r.job_id = "no-such-job";
            r.attempt = 1;
            r.outcome = msg::Outcome::kApplied;
            b.send(zmq::buffer(msg::Encode(msg::Envelope{msg::kProtocolVersion, 0, r})), zmq::send_flags::none);
            break;
          }
          default:
            for (int i = 0; i < 6; ++i) {
              b.send(zmq::str_buffer("x"), i < 5 ? zmq::send_flags::sndmore : zmq::send_flags::none);
            }
        }
        Count([](Tally& t) { ++t.sent; });
        std::vector<zmq_pollitem_t> bi{{b.handle(), 0, ZMQ_POLLIN, 0}};
        zmq::poll(bi, milliseconds(50));  // take a reply if one comes; not required
      } catch (const zmq::error_t&) {
        // EINTR and friends: try the next attack.
      }
      const auto until = Clock::now() + pause_;
      while (!stop_ && Clock::now() < until) std::this_thread::sleep_for(milliseconds(5));  // pacing only
    }
  }

  template <typename F>
  void Count(F f) {
    std::lock_guard<std::mutex> l(mu_);
    f(tally_);
  }

  std::function<std::pair<std::string, std::string>()> endpoints_;
  std::mt19937 rng_;
  milliseconds pause_;
  mutable std::mutex mu_;
  Tally tally_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------
// The cluster: one broker (restartable on its store and ports) and named workers.

class SystemBroker {
 public:
  SystemBroker(std::string dir, std::string extra_config = "") : dir_(std::move(dir)) {
    std::ofstream cfg(dir_ + "/broker.toml");
    cfg << "[heartbeat]\ninterval = \"250ms\"\nliveness = 3\norphan_grace = \"3s\"\n" << extra_config;
    cfg.close();
    Start("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "tcp://127.0.0.1:*");
  }
  std::string frontend() const {
    std::lock_guard<std::mutex> l(mu_);
    return fe_;
  }
  std::string backend() const {
    std::lock_guard<std::mutex> l(mu_);
    return be_;
  }
  std::string events() const {
    std::lock_guard<std::mutex> l(mu_);
    return ev_;
  }
  std::string log() const { return ReadFile(dir_ + "/broker.log"); }
  Process& process() { return *proc_; }
  void Kill9() { proc_->Kill(); }
  // Restarts on the same store and the same (already bound once) ports.
  void Restart() {
    proc_->Kill();
    Start(frontend(), backend(), events());
  }

 private:
  void Start(const std::string& fe, const std::string& be, const std::string& ev) {
    const std::string epf = dir_ + "/endpoints";
    std::error_code ec;
    fs::remove(epf, ec);
    proc_ = std::make_unique<Process>(
        std::vector<std::string>{BinDir() + "/despool-broker", "--config", dir_ + "/broker.toml", "--frontend", fe,
                                 "--backend", be, "--events", ev, "--store", dir_ + "/broker.db", "--endpoints-file",
                                 epf},
        dir_ + "/broker.log");
    if (!WaitFor([&] { return fs::exists(epf) || !proc_->running(); }, seconds(20)) || !fs::exists(epf)) {
      throw std::runtime_error("broker did not start: " + log());
    }
    std::ifstream f(epf);
    std::string line;
    std::lock_guard<std::mutex> l(mu_);
    while (std::getline(f, line)) {
      const auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      const std::string k = line.substr(0, eq), v = line.substr(eq + 1);
      if (k == "frontend") fe_ = v;
      if (k == "backend") be_ = v;
      if (k == "events") ev_ = v;
    }
  }

  std::string dir_;
  mutable std::mutex mu_;
  std::string fe_, be_, ev_;
  std::unique_ptr<Process> proc_;
};

// Client-library helpers (despool_ctl). Every call bounded by its timeout.
class Api {
 public:
  explicit Api(const std::string& frontend, milliseconds timeout = milliseconds(5000)) {
    client_.set_default_timeout(timeout);
    if (auto st = client_.Connect(frontend); !st.ok()) throw std::runtime_error(st.error().message);
  }
  ctl::Client& client() { return client_; }

  // The job ids, or an error message (not acknowledged).
  Result<std::vector<msg::JobRef>> Submit(const std::vector<msg::Instruction>& ins, milliseconds timeout = {}) {
    msg::SubmitRequest r;
    r.instructions = ins;
    auto rep = client_.Submit(r, timeout);
    if (!rep.ok()) return rep.error();
    return rep.value().jobs;
  }
  std::vector<msg::JobInfo> AllJobs() {
    msg::StatusRequest r;
    r.limit = 0;
    auto rep = client_.Status(r);
    if (!rep.ok()) throw std::runtime_error("status: " + rep.error().message);
    return rep.value();
  }
  std::optional<msg::JobInfo> Job(const std::string& id) {
    msg::StatusRequest r;
    r.job_id = id;
    auto rep = client_.Status(r);
    if (!rep.ok() || rep.value().size() != 1) return std::nullopt;
    return rep.value()[0];
  }
  bool HasWorker(const std::string& name) {
    auto w = client_.Workers();
    if (!w.ok()) return false;
    for (const auto& x : w.value()) {
      if (x.name == name) return true;
    }
    return false;
  }
  std::uint32_t Running(const std::string& name) {
    auto w = client_.Workers();
    if (!w.ok()) return 0;
    for (const auto& x : w.value()) {
      if (x.name == name) return x.running;
    }
    return 0;
  }
  // Polls until every job in `ids` is terminal (status errors count as "not yet").
  bool WaitTerminal(const std::vector<std::string>& ids, milliseconds within) {
    std::set<std::string> left(ids.begin(), ids.end());
    return WaitFor(
        [&] {
          std::vector<msg::JobInfo> jobs;
          try {
            jobs = AllJobs();
          } catch (const std::exception&) {
            return false;
          }
          for (const auto& j : jobs) {
            if (msg::IsTerminal(j.state)) left.erase(j.id);
          }
          return left.empty();
        },
        within);
  }

 private:
  ctl::Client client_;
};

// Fast retries (100..400 ms) so deferrals resolve within a test; a scenario with many held
// packages passes a longer base so retries do not crowd out fresh work.
inline msg::Instruction MakeInstruction(const std::string& pkg, std::uint64_t v, const std::string& source,
                                        std::vector<std::string> dps, std::uint64_t retry_base_ms = 100) {
  msg::Instruction in;
  in.package = pkg;
  in.version = v;
  in.source = source;
  in.dps = std::move(dps);
  in.policy.retry_base_ms = retry_base_ms;
  in.policy.retry_max_ms = retry_base_ms * 4;
  in.policy.max_attempts = 1000;
  return in;
}

// (3) Every acknowledged job is terminal and consistent with its version; the newest version of
// each (DP, package) the broker knows is applied (or up-to-date) and live. Returns problems.
inline std::vector<std::string> CheckOutcomes(const std::vector<msg::JobInfo>& all,
                                              const std::set<std::string>& acked) {
  std::vector<std::string> problems;
  std::map<std::string, const msg::JobInfo*> by_id;
  std::map<std::pair<std::string, std::string>, std::uint64_t> newest;
  for (const auto& j : all) {
    if (j.kind != msg::JobKind::kRefresh) continue;
    if (by_id.count(j.id)) problems.push_back("job id listed twice: " + j.id);
    by_id[j.id] = &j;
    auto& n = newest[{j.dp, j.package}];
    n = std::max(n, j.version);
  }
  for (const auto& id : acked) {
    auto it = by_id.find(id);
    if (it == by_id.end()) {
      problems.push_back("acknowledged job " + id + " is unknown to the broker");
      continue;
    }
    const msg::JobInfo& j = *it->second;
    const std::uint64_t top = newest[{j.dp, j.package}];
    const std::string who = j.id + " (" + j.dp + "/" + j.package + "@" + std::to_string(j.version) + ", newest " +
                            std::to_string(top) + ")";
    using S = msg::JobState;
    if (!msg::IsTerminal(j.state)) {
      problems.push_back(who + " not terminal: " + msg::ToString(j.state));
    } else if (j.version == top) {
      if (j.state != S::kApplied && j.state != S::kUpToDate) {
        problems.push_back(who + " is the newest but ended " + msg::ToString(j.state) + " " +
                           j.last_error.value_or(""));
      }
    } else if (j.state != S::kApplied && j.state != S::kSuperseded && j.state != S::kUpToDate) {
      problems.push_back(who + " ended " + msg::ToString(j.state) + " " + j.last_error.value_or(""));
    }
  }
  return problems;
}

// Newest version per (dp, package) among refresh jobs.
inline std::map<std::pair<std::string, std::string>, std::uint64_t> NewestVersions(
    const std::vector<msg::JobInfo>& all) {
  std::map<std::pair<std::string, std::string>, std::uint64_t> newest;
  for (const auto& j : all) {
    if (j.kind != msg::JobKind::kRefresh) continue;
    auto& n = newest[{j.dp, j.package}];
    n = std::max(n, j.version);
  }
  return newest;
}

// A tmpfs mounted for the test's lifetime (full-disk scenario); unmounted (lazily) at the end.
class TmpfsMount {
 public:
  TmpfsMount(const std::string& dir, const std::string& size) : dir_(dir) {
    fs::create_directories(dir_);
    const std::string opts = "size=" + size;
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, opts.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

}  // namespace despool::systest
