// engine_bench: the refresh engine against cp -a and rsync, and the in-use probes against fuser.
//
// Prints figures; not a test. Default workload (issue 4): 10,000 files / ~1 GiB in 100
// directories, lognormal sizes 4 KiB..10 MiB, incompressible. Smaller runs:
//   engine_bench --files 2000 --total-mib 200
// Flags: --files N  --total-mib M  --dirs D  --changed-pct P (default 1)  --dir PATH (work dir on
// the filesystem to measure; default $TMPDIR)  --keep (leave the work dir)  --no-cold
// --rounds K (default 5: K interleaved rounds of the steady-state comparison, ours and both
// rsyncs once each per round, warm and cold: medians, min/max, per-round ratios, the ratios at
// equal durability (the rsyncs' times with their sync), and the floor: the stat of every source
// and live entry alone, what any refresh meeting issue 4 must do before it decides anything)
// --repeat N (N more steady-state refreshes after the warm table, alternating the v2 and v3
// sources: min/median and the phase medians; for perf record)  --engine-only (skip cp/rsync and
// the in-use probes: quick profiling runs)  --no-seed-spare (EngineConfig::seed_spare off: the
// first install seeds no spare, so v1 -> v2 is staged from scratch, as before it existed).
//
// Refresh time runs from the call to its return (every fsync, the retiring of the old tree and,
// after a first install, the seeding of the spare included); cp/rsync are timed with and
// without a following `sync`. Bytes written and read come from /proc/self/io write_bytes and
// read_bytes (children's counters are added to ours when they are reaped, so the same counters
// cover cp and rsync). Cold runs drop the page cache first
// (`sync; echo 3 > /proc/sys/vm/drop_caches`) when permitted, then wait until the kernel has
// freed the dropped inodes and dentries (see DropCaches). A run counts only if the result
// equals the source (paths, types, sizes, modes, mtimes, symlink targets, content hashes).
#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "despool/workers/allocator.h"
#include "despool/workers/engine.h"
#include "despool/workers/inuse.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using despool::workers::Engine;

namespace {

struct Flags {
  int files = 10000;
  std::uint64_t total_mib = 1024;
  int dirs = 100;
  double changed_pct = 1.0;
  std::string dir;
  bool keep = false;
  bool cold = true;
  int repeat = 0;
  int rounds = 5;
  bool engine_only = false;
  int threads = 0;  // 0: EngineConfig's default
  bool seed_spare = true;
};

double Secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// The middle value, or the mean of the two middle ones (v not empty).
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// CPU seconds (user + system) of this process, all threads.
double CpuSecs() {
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// A counter of /proc/self/io: "write_bytes:" or "read_bytes:" (bytes this process, and the
// children it has reaped, caused to be written to or read from the storage layer).
std::uint64_t IoCounter(const char* key_wanted) {
  std::ifstream in("/proc/self/io");
  std::string key;
  std::uint64_t v = 0;
  while (in >> key >> v) {
    if (key == key_wanted) return v;
  }
  return 0;
}
std::uint64_t WriteBytes() { return IoCounter("write_bytes:"); }
std::uint64_t ReadBytes() { return IoCounter("read_bytes:"); }

int Sh(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  if (rc != 0) std::fprintf(stderr, "command failed (%d): %s\n", rc, cmd.c_str());
  return rc;
}

// The objects of the slab caches that hold inodes and dentries (/proc/slabinfo active_objs).
std::uint64_t InodeAndDentryObjects() {
  std::ifstream in("/proc/slabinfo");
  std::string name, line;
  std::uint64_t total = 0, active = 0;
  while (in >> name) {
    if (name == "ext4_inode_cache" || name == "dentry" || name == "inode_cache") {
      if (in >> active) total += active;
    }
    std::getline(in, line);
  }
  return total;
}

// sync; echo 3 > drop_caches; then waits until the kernel has finished freeing what it dropped.
// The inodes and dentries are freed by RCU callbacks for tens of ms after the write returns
// (measured: 18 ms for 20,000 inodes); on 2 cores they would take CPU from whichever method runs
// first. Done: /proc/slabinfo's counts unchanged over 2 ms (bounded at 2 s).
bool DropCaches() {
  ::sync();
  int fd = ::open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, "3\n", 2) == 2;
  ::close(fd);
  std::uint64_t last = InodeAndDentryObjects();
  for (int i = 0; ok && i < 1000; ++i) {
    ::usleep(2000);
    const std::uint64_t now = InodeAndDentryObjects();
    if (now == last) break;
    last = now;
  }
  return ok;
}

void FillRandom(std::mt19937_64& rng, std::vector<char>* buf) {
  auto* p = reinterpret_cast<std::uint64_t*>(buf->data());
  for (size_t i = 0; i < buf->size() / 8; ++i) p[i] = rng();
}

void WriteRandomFile(const std::string& path, std::uint64_t size, std::mt19937_64& rng,
                     std::vector<char>& buf, time_t mtime) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
  std::uint64_t left = size;
  while (left > 0) {
    FillRandom(rng, &buf);
    size_t n = static_cast<size_t>(std::min<std::uint64_t>(left, buf.size()));
    if (::write(fd, buf.data(), n) != static_cast<ssize_t>(n)) {
      std::perror("write");
      std::exit(1);
    }
    left -= n;
  }
  struct timespec ts[2] = {{0, UTIME_OMIT}, {mtime, 0}};
  ::futimens(fd, ts);
  ::close(fd);
}

struct Package {
  std::vector<std::string> rel;
  std::vector<std::uint64_t> size;
  std::uint64_t total = 0;
};

Package Generate(const Flags& f, const std::string& dir) {
  std::mt19937_64 rng(42);
  std::lognormal_distribution<double> dist(0.0, 1.5);
  std::vector<double> raw(static_cast<size_t>(f.files));
  double sum = 0;
  for (auto& r : raw) sum += (r = dist(rng));
  const double target = static_cast<double>(f.total_mib) * 1024 * 1024;
  Package p;
  for (int i = 0; i < f.files; ++i) {
    double s = raw[static_cast<size_t>(i)] / sum * target;
    auto size = static_cast<std::uint64_t>(std::clamp(s, 4096.0, 10.0 * 1024 * 1024));
    p.rel.push_back("dir" + std::to_string(i % f.dirs) + "/file" + std::to_string(i) + ".bin");
    p.size.push_back(size);
    p.total += size;
  }
  std::vector<char> buf(1 << 20);
  for (int d = 0; d < f.dirs; ++d) fs::create_directories(dir + "/dir" + std::to_string(d));
  for (size_t i = 0; i < p.rel.size(); ++i) {
    WriteRandomFile(dir + "/" + p.rel[i], p.size[i], rng, buf, 1700000000);
  }
  return p;
}

// Tree fingerprint: path -> type/size/mode/mtime/content hash (or link target).
std::map<std::string, std::string> Fingerprint(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::vector<char> buf(1 << 20);
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator();
       ++it) {
    struct stat st;
    ::lstat(it->path().c_str(), &st);
    std::string v = std::to_string(st.st_mode) + " " + std::to_string(st.st_mtim.tv_sec) + "." +
                    std::to_string(st.st_mtim.tv_nsec);
    if (S_ISREG(st.st_mode)) {
      v += " " + std::to_string(st.st_size);
      int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC);
      XXH3_state_t* s = XXH3_createState();
      XXH3_64bits_reset(s);
      ssize_t n;
      while ((n = ::read(fd, buf.data(), buf.size())) > 0) {
        XXH3_64bits_update(s, buf.data(), static_cast<size_t>(n));
      }
      ::close(fd);
      v += " " + std::to_string(XXH3_64bits_digest(s));
      XXH3_freeState(s);
    } else if (S_ISLNK(st.st_mode)) {
      v += " -> " + fs::read_symlink(it->path()).string();
    }
    out[it->path().lexically_relative(dir).string()] = v;
  }
  return out;
}

// Reads every directory and lstat()s every entry of `dir` (content untouched): what a quick-check
// incremental refresh, ours or rsync's, reads of a tree. Run on the trees a warm-cache run reads
// just before it, for every method alike: this VM's DAMON pages out memory unused for about a
// minute, so a tree last read earlier in the bench is no longer warm (measured: our steady-state
// scan phase 31 ms there against 17 ms back to back).
void WarmMetadata(const std::string& dir) {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    struct stat st;
    ::lstat(it->path().c_str(), &st);
  }
}

struct Row {
  std::string name;
  double secs = 0, secs_sync = -1;
  double cpu = -1;  // ours only: CPU seconds of the refresh (all its threads)
  std::uint64_t bytes = 0;
  std::uint64_t read_bytes = 0;  // read from storage (not the page cache)
  bool valid = false;
  std::string note;
  despool::workers::RefreshStats stats;  // ours only
};

void Print(const std::string& title, const std::vector<Row>& rows, double ref) {
  std::printf("\n%s\n", title.c_str());
  std::printf("  %-34s %9s %11s %12s %9s %8s  %s\n", "method", "time s", "+sync s",
              "written MiB", "read MiB", "vs ours", "result");
  for (const auto& r : rows) {
    char sync_col[32] = "-";
    if (r.secs_sync >= 0) std::snprintf(sync_col, sizeof sync_col, "%.3f", r.secs_sync);
    double t = r.secs_sync >= 0 ? r.secs_sync : r.secs;
    std::printf("  %-34s %9.3f %11s %12.1f %9.1f %7.2fx  %s%s\n", r.name.c_str(), r.secs,
                sync_col, static_cast<double>(r.bytes) / 1048576.0,
                static_cast<double>(r.read_bytes) / 1048576.0, ref > 0 ? t / ref : 0.0,
                r.valid ? "ok" : "MISMATCH (run does not count)", r.note.c_str());
  }
}

std::string Q(const std::string& s) { return "'" + s + "'"; }

// Runs a shell command; time alone and time including a following sync.
Row Tool(const std::string& name, const std::string& cmd, const std::string& result,
         const std::map<std::string, std::string>& want) {
  Row r;
  r.name = name;
  ::sync();
  auto w0 = WriteBytes();
  auto rd0 = ReadBytes();
  auto t0 = Clock::now();
  Sh(cmd);
  auto t1 = Clock::now();
  r.read_bytes = ReadBytes() - rd0;
  ::sync();
  auto t2 = Clock::now();
  r.bytes = WriteBytes() - w0;
  r.secs = Secs(t1 - t0);
  r.secs_sync = Secs(t2 - t0);
  r.valid = Fingerprint(result) == want;
  return r;
}

Row Ours(Engine& engine, const std::string& name, const std::string& root, std::uint64_t version,
         const std::string& src, const std::map<std::string, std::string>& want,
         bool validate = true) {
  Row r;
  r.name = name;
  ::sync();
  despool::workers::RefreshRequest req;
  req.dp_root = root;
  req.package_id = "pkg";
  req.version = version;
  req.source_dir = src;
  despool::workers::CancelToken cancel;
  auto w0 = WriteBytes();
  auto rd0 = ReadBytes();
  double c0 = CpuSecs();
  auto t0 = Clock::now();
  auto out = engine.Refresh(req, nullptr, cancel);
  auto t1 = Clock::now();
  r.read_bytes = ReadBytes() - rd0;
  r.cpu = CpuSecs() - c0;
  r.bytes = WriteBytes() - w0;
  r.secs = Secs(t1 - t0);
  if (out.kind != despool::workers::OutcomeKind::kApplied) {
    r.note = std::string(" (") + despool::workers::OutcomeKindName(out.kind) + ": " +
             out.message + ")";
    return r;
  }
  const auto& s = out.stats;
  r.stats = s;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "\n      copied %llu files / %.1f MiB, linked %llu; scan %.3f stage %.3f sync %.3f "
                "in-use %.3f switch %.3f retire %.3f; cpu %.3f; CLOCK_MONOTONIC %.6f,%.6f (for "
                "perf record -k mono; perf report --time)",
                static_cast<unsigned long long>(s.files_copied),
                static_cast<double>(s.bytes_copied) / 1048576.0,
                static_cast<unsigned long long>(s.files_linked), Secs(s.scan), Secs(s.stage),
                Secs(s.sync), Secs(s.in_use_check), Secs(s.switch_time), Secs(s.retire), r.cpu,
                Secs(t0.time_since_epoch()), Secs(t1.time_since_epoch()));
  r.note = buf;
  r.valid = !validate || Fingerprint(root + "/pkg") == want;
  return r;
}

// `n` more steady-state refreshes (versions first_version, ...), alternating the v2 and v3 sources: each
// changes ~2x changed_pct of the files and stages from the tree the previous switch retired.
// The first and the last result are compared with the source (hashing 1 GiB after each run
// would dominate a profile).
void Repeat(Engine& engine, int n, const std::string& dp, const std::string& w,
            const std::map<std::string, std::string>& want2,
            const std::map<std::string, std::string>& want3, std::uint64_t first_version) {
  std::vector<Row> rows;
  for (int i = 0; i < n; ++i) {
    bool even = i % 2 == 0;
    rows.push_back(Ours(engine, "steady", dp, first_version + static_cast<std::uint64_t>(i),
                        w + (even ? "/src2" : "/src3"), even ? want2 : want3,
                        i == 0 || i == n - 1));
    if (!rows.back().valid) {
      std::printf("  repeat %d: MISMATCH%s\n", i, rows.back().note.c_str());
      return;
    }
  }
  auto median = [&](auto get) {
    std::vector<double> v;
    for (const auto& r : rows) v.push_back(get(r));
    return Median(std::move(v));
  };
  auto phase = [&](std::chrono::nanoseconds despool::workers::RefreshStats::*m) {
    return median([&](const Row& r) { return Secs(r.stats.*m) * 1000; });
  };
  using S = despool::workers::RefreshStats;
  std::printf("\nSteady-state refresh repeated %d times (warm, alternating v2/v3 sources)\n", n);
  auto by_secs = [](const Row& x, const Row& y) { return x.secs < y.secs; };
  std::printf("  total ms: min %.1f median %.1f max %.1f\n",
              std::min_element(rows.begin(), rows.end(), by_secs)->secs * 1000,
              median([](const Row& r) { return r.secs * 1000; }),
              std::max_element(rows.begin(), rows.end(), by_secs)->secs * 1000);
  std::printf("  cpu ms (user+sys, all threads): median %.1f\n",
              median([](const Row& r) { return r.cpu * 1000; }));
  std::printf("  median phases ms: scan %.1f stage %.1f sync %.1f in-use %.1f switch %.1f "
              "retire %.1f; written MiB median %.1f\n",
              phase(&S::scan), phase(&S::stage), phase(&S::sync), phase(&S::in_use_check),
              phase(&S::switch_time), phase(&S::retire),
              median([](const Row& r) { return static_cast<double>(r.bytes) / 1048576.0; }));
}

// Every entry below `dirfd` stat'ed (fstatat, no symlink followed), depth first; the count.
std::size_t StatSubtree(int dirfd) {
  DIR* d = ::fdopendir(dirfd);
  if (d == nullptr) {
    ::close(dirfd);
    return 0;
  }
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
  }
  std::size_t n = 0;
  for (const auto& name : names) {
    struct stat st;
    if (::fstatat(::dirfd(d), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    ++n;
    if (S_ISDIR(st.st_mode)) {
      int sub = ::openat(::dirfd(d), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0) n += StatSubtree(sub);
    }
  }
  ::closedir(d);
  return n;
}

// The least any refresh that meets issue 4 must do before it can decide anything: stat every
// entry of the source and of the live tree. Both trees' top-level directories go to one queue
// that `threads` threads drain, so both cores stay busy until the last subtree. Seconds.
double StatFloor(const std::vector<std::string>& trees, int threads) {
  auto t0 = Clock::now();
  std::vector<std::string> dirs;
  for (const auto& t : trees) {
    for (const auto& e : fs::directory_iterator(t)) {
      struct stat st;
      if (::lstat(e.path().c_str(), &st) == 0 && S_ISDIR(st.st_mode)) dirs.push_back(e.path());
    }
  }
  std::atomic<std::size_t> next{0};
  std::vector<std::thread> pool;
  for (int k = 0; k < threads; ++k) {
    pool.emplace_back([&] {
      for (std::size_t i = next++; i < dirs.size(); i = next++) {
        int fd = ::open(dirs[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) StatSubtree(fd);
      }
    });
  }
  for (auto& t : pool) t.join();
  return Secs(Clock::now() - t0);
}

// `rounds` more steady-state comparisons (the sources alternate v2, v3, v2...: each round changes
// what v2 and v3 differ in), each method once per round in turn, every run prepared alike
// (`prep`: cold, caches dropped; warm, the metadata of the trees it reads read just before).
// A single run on this VM varies by tens of percent (host memory, writeback, the other
// methods' effects on the caches); the medians of interleaved rounds compare the methods, and
// the per-round ratios show the spread. The link-dest runs chain new trees, each from the last.
// Returns the ratios of the medians (rsync --delay-updates / ours, --link-dest / ours), or
// nothing when a run did not count.
std::optional<std::pair<double, double>> Rounds(Engine& engine, int rounds, const std::string& w, const std::string& r,
            std::uint64_t* version, const std::map<std::string, std::string>& want2,
            const std::map<std::string, std::string>& want3,
            const std::function<void(std::initializer_list<std::string>)>& prep, const char* label) {
  std::vector<double> ours, delay, link, delay_sync, link_sync, floor;
  std::string ld_prev = r + "/ld3";
  for (int k = 0; k < rounds; ++k) {
    const bool even = k % 2 == 0;
    const std::string src = w + (even ? "/src2" : "/src3");
    const auto& want = even ? want2 : want3;
    prep({src, r + "/dp"});
    Row a = Ours(engine, "ours", r + "/dp", (*version)++, src, want);
    prep({src, r + "/rs1"});
    Row b = Tool("rsync --delay-updates",
                 "rsync -a --delete --delay-updates " + Q(src + "/") + " " + Q(r + "/rs1/"), r + "/rs1",
                 want);
    const std::string ld = r + "/ldr" + std::to_string(k);
    prep({src, ld_prev});
    Row c = Tool("rsync --link-dest",
                 "rsync -a --delete --link-dest=" + Q(ld_prev) + " " + Q(src + "/") + " " + Q(ld + "/"),
                 ld, want);
    ld_prev = ld;
    if (!a.valid || !b.valid || !c.valid) {
      std::printf("  round %d: MISMATCH (rounds stopped)%s\n", k, a.note.c_str());
      return std::nullopt;
    }
    ours.push_back(a.secs);
    delay.push_back(b.secs);
    link.push_back(c.secs);
    delay_sync.push_back(b.secs_sync);
    link_sync.push_back(c.secs_sync);
    prep({src, r + "/dp"});
    floor.push_back(StatFloor({src, r + "/dp/pkg"}, 4));
  }
  auto line = [&](const char* name, const std::vector<double>& v) {
    std::printf("  %-34s median %7.1f ms  min %7.1f  max %7.1f  (", name, Median(v) * 1000,
                *std::min_element(v.begin(), v.end()) * 1000, *std::max_element(v.begin(), v.end()) * 1000);
    for (size_t k = 0; k < v.size(); ++k) std::printf("%s%.1f", k ? " " : "", v[k] * 1000);
    std::printf(")\n");
  };
  std::printf("\nSteady-state incremental, %d interleaved rounds (%s cache; each round: ours, "
              "rsync --delay-updates, rsync --link-dest)\n",
              rounds, label);
  line("despool refresh", ours);
  line("rsync -a --delete --delay-updates", delay);
  line("rsync -a --delete --link-dest", link);
  line("rsync --delay-updates + sync", delay_sync);
  line("rsync --link-dest + sync", link_sync);
  auto ratios = [&](const std::vector<double>& tool) {
    std::string out;
    double lo = 1e9;
    for (size_t k = 0; k < tool.size(); ++k) {
      char b[16];
      std::snprintf(b, sizeof b, "%s%.2f", k ? " " : "", tool[k] / ours[k]);
      out += b;
      lo = std::min(lo, tool[k] / ours[k]);
    }
    return std::make_pair(out, lo);
  };
  auto [d_rounds, d_min] = ratios(delay);
  auto [l_rounds, l_min] = ratios(link);
  std::printf("  ratio of medians: %.2fx vs --delay-updates (target 2x), %.2fx vs --link-dest "
              "(target 5x)\n  per round: --delay-updates %s (lowest %.2f); --link-dest %s (lowest %.2f)\n",
              Median(delay) / Median(ours), Median(link) / Median(ours), d_rounds.c_str(), d_min,
              l_rounds.c_str(), l_min);
  std::printf("  floor, the stat of every source and live entry alone (4 threads, prepared like "
              "ours): median %.1f ms; --link-dest's median is %.2fx that\n",
              Median(floor) * 1000, Median(link) / Median(floor));
  // Ours is durable when it returns; a tool's output is once a `sync` after it returned.
  std::printf("  at equal durability (the tools' time with their sync): %.2fx vs --delay-updates, "
              "%.2fx vs --link-dest\n",
              Median(delay_sync) / Median(ours), Median(link_sync) / Median(ours));
  return std::make_pair(Median(delay) / Median(ours), Median(link) / Median(ours));
}

void InUseBench(const std::string& live, const Package& p) {
  std::mt19937_64 rng(7);
  size_t held = std::uniform_int_distribution<size_t>(0, p.rel.size() - 1)(rng);
  std::string held_path = live + "/" + p.rel[held];
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) return;
  pid_t child = ::fork();
  if (child == 0) {
    int fd = ::open(held_path.c_str(), O_RDONLY);
    (void)fd;
    char c = 'R';
    if (::write(ready[1], &c, 1) != 1) ::_exit(1);
    for (;;) ::pause();
  }
  ::close(ready[1]);
  char c;
  if (::read(ready[0], &c, 1) != 1) return;
  ::close(ready[0]);
  int dirfd = ::open(live.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  std::printf("\nIn-use check over %zu files, one held open at index %zu (%s)\n", p.rel.size(), held,
              p.rel[held].c_str());
  auto run = [&](const char* name, despool::workers::InUseProbe& probe) {
    double best = 1e9;
    bool named = false;
    std::string detail;
    for (int i = 0; i < 3; ++i) {
      auto t0 = Clock::now();
      auto r = probe.Check(dirfd, p.rel);
      best = std::min(best, Secs(Clock::now() - t0));
      if (!r.ok()) {
        detail = r.error().ToString();
        continue;
      }
      named = std::find(r->in_use.begin(), r->in_use.end(), p.rel[held]) != r->in_use.end() &&
              r->in_use.size() == 1;
      detail = r->holders.empty() ? "" : " holder pid " + std::to_string(r->holders[0].pid);
    }
    std::printf("  %-22s %8.1f ms  %s%s\n", name, best * 1000, named ? "names the file" : "WRONG",
                detail.c_str());
    return best;
  };
  auto lease = despool::workers::MakeLeaseProbe();
  auto proc = despool::workers::MakeProcProbe();
  auto autop = despool::workers::MakeAutoProbe();
  double t_lease = run("lease probe", *lease);
  run("/proc probe", *proc);
  double t_auto = run("auto (lease + /proc)", *autop);
  // fuser -s with every file as an argument.
  std::vector<std::string> args = {"fuser", "-s"};
  for (const auto& r : p.rel) args.push_back(live + "/" + r);
  double best = 1e9;
  int status = 0;
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    pid_t pid = ::fork();
    if (pid == 0) {
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      int devnull = ::open("/dev/null", O_WRONLY);
      ::dup2(devnull, 2);  // fuser complains about every /proc/<pid>/fd it may not read
      ::execvp("fuser", argv.data());
      ::_exit(127);
    }
    ::waitpid(pid, &status, 0);
    best = std::min(best, Secs(Clock::now() - t0));
  }
  std::printf("  %-22s %8.1f ms  %s\n", "fuser -s", best * 1000,
              WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "found a user (cannot name it with -s)"
                                                            : "WRONG");
  std::printf("  lease probe is %.1fx faster than fuser; auto %.1fx\n", best / t_lease, best / t_auto);
  ::close(dirfd);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (auto st = despool::workers::RetainFreedMemoryForReuse(); !st.ok()) {  // as despool-worker does
    std::fprintf(stderr, "engine_bench: %s\n", st.error().message.c_str());
  }
  // Whole lines: scripts/bench reads stdout and stderr (the engine's log) through one pipe.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--files") f.files = std::stoi(next());
    else if (a == "--total-mib") f.total_mib = std::stoull(next());
    else if (a == "--dirs") f.dirs = std::stoi(next());
    else if (a == "--changed-pct") f.changed_pct = std::stod(next());
    else if (a == "--dir") f.dir = next();
    else if (a == "--keep") f.keep = true;
    else if (a == "--no-cold") f.cold = false;
    else if (a == "--repeat") f.repeat = std::stoi(next());
    else if (a == "--rounds") f.rounds = std::stoi(next());
    else if (a == "--engine-only") f.engine_only = true;
    else if (a == "--threads") f.threads = std::stoi(next());
    else if (a == "--no-seed-spare") f.seed_spare = false;
    else {
      std::fprintf(stderr,
                   "usage: engine_bench [--files N] [--total-mib M] [--dirs D] [--changed-pct P] "
                   "[--dir PATH] [--keep] [--no-cold] [--repeat N] [--rounds K] [--engine-only] [--threads T] "
                   "[--no-seed-spare]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  if (f.files < 1 || f.dirs < 1) return 2;
  if (!despool::workers::IgnoreLeaseBreakSignal().ok()) return 1;
  std::string base = f.dir.empty() ? fs::temp_directory_path().string() : f.dir;
  std::string tmpl = base + "/despool-bench-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string w = tmpl;
  std::printf("engine_bench: %d files, ~%llu MiB in %d dirs, %.1f%% changed; work dir %s\n",
              f.files, static_cast<unsigned long long>(f.total_mib), f.dirs, f.changed_pct,
              w.c_str());

  auto t_gen = Clock::now();
  Package p = Generate(f, w + "/src1");
  // v2: hard-linked copy of v1 with changed_pct% of the files rewritten (new content + mtime).
  Sh("cp -al " + Q(w + "/src1") + " " + Q(w + "/src2"));
  {
    std::mt19937_64 rng(99);
    std::vector<char> buf(1 << 20);
    std::vector<size_t> idx(p.rel.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::shuffle(idx.begin(), idx.end(), rng);
    size_t n = std::max<size_t>(1, static_cast<size_t>(static_cast<double>(idx.size()) * f.changed_pct / 100.0));
    for (size_t k = 0; k < n; ++k) {
      std::string path = w + "/src2/" + p.rel[idx[k]];
      std::string tmp = path + ".new";
      WriteRandomFile(tmp, p.size[idx[k]], rng, buf, 1800000000);
      fs::rename(tmp, path);
    }
    for (int d = 0; d < f.dirs; ++d) {
      struct timespec ts[2] = {{0, UTIME_OMIT}, {1650000000, 0}};
      ::utimensat(AT_FDCWD, (w + "/src2/dir" + std::to_string(d)).c_str(), ts, 0);
      ::utimensat(AT_FDCWD, (w + "/src1/dir" + std::to_string(d)).c_str(), ts, 0);
    }
    std::printf("generated %.1f MiB in %.1f s; %zu files changed in v2\n",
                static_cast<double>(p.total) / 1048576.0, Secs(Clock::now() - t_gen), n);
  }
  // v3: the same again from v2 (other files), for the steady state: a refresh whose staging
  // starts from the tree retired by the previous one.
  Sh("cp -al " + Q(w + "/src2") + " " + Q(w + "/src3"));
  {
    std::mt19937_64 rng(123);
    std::vector<char> buf(1 << 20);
    size_t n = std::max<size_t>(1, static_cast<size_t>(static_cast<double>(p.rel.size()) * f.changed_pct / 100.0));
    for (size_t k = 0; k < n; ++k) {
      size_t i = std::uniform_int_distribution<size_t>(0, p.rel.size() - 1)(rng);
      std::string path = w + "/src3/" + p.rel[i];
      WriteRandomFile(path + ".new", p.size[i], rng, buf, 1800000001);
      fs::rename(path + ".new", path);
    }
    for (int d = 0; d < f.dirs; ++d) {
      struct timespec ts[2] = {{0, UTIME_OMIT}, {1650000000, 0}};
      ::utimensat(AT_FDCWD, (w + "/src3/dir" + std::to_string(d)).c_str(), ts, 0);
    }
  }
  auto want1 = Fingerprint(w + "/src1");
  auto want2 = Fingerprint(w + "/src2");
  auto want3 = Fingerprint(w + "/src3");

  bool can_cold = f.cold && DropCaches();
  if (f.cold && !can_cold) std::printf("cold-cache runs skipped: drop_caches not permitted here\n");

  for (int pass = 0; pass < (can_cold ? 2 : 1); ++pass) {
    const bool cold = pass == 1;
    const char* label = cold ? "cold" : "warm";
    std::string r = w + "/" + label;
    fs::create_directories(r + "/dp");
    despool::workers::EngineConfig config;
    if (f.threads > 0) config.threads = f.threads;
    config.seed_spare = f.seed_spare;
    Engine engine(config);
    // Before each measured run: cold, drop every cache; warm, read the metadata of the trees
    // the run reads (its source, its destination or base).
    auto prep = [&](std::initializer_list<std::string> trees) {
      if (cold) {
        DropCaches();
      } else {
        for (const auto& t : trees) WarmMetadata(t);
      }
    };
    // Full refresh.
    std::vector<Row> full;
    if (!cold) {
      // Warm every source (content, inodes and dentries): the drop_caches probe above emptied
      // the caches, and otherwise our v1->v2 and v2->v3 runs would look up src2/src3 cold while
      // the tools that run after them find the dentries warmed by us.
      for (const char* src : {"/src1", "/src2", "/src3"}) Fingerprint(w + src);
    }
    prep({w + "/src1", r + "/dp"});
    full.push_back(Ours(engine, "despool refresh (first install)", r + "/dp", 1, w + "/src1", want1));
    if (!f.engine_only) {
      prep({w + "/src1"});
      full.push_back(Tool("cp -a", "cp -a " + Q(w + "/src1") + " " + Q(r + "/cp1"), r + "/cp1", want1));
      prep({w + "/src1"});
      full.push_back(Tool("rsync -a --delete --delay-updates",
                          "rsync -a --delete --delay-updates " + Q(w + "/src1/") + " " + Q(r + "/rs1/"),
                          r + "/rs1", want1));
      prep({w + "/src1"});
      full.push_back(Tool("rsync -a --delete (link-dest class)",
                          "rsync -a --delete " + Q(w + "/src1/") + " " + Q(r + "/ld1/"), r + "/ld1",
                          want1));
    }
    Print(std::string("Full refresh (") + label + " cache)", full, full[0].secs);

    // Incremental refreshes: v1 -> v2 (staged from the spare the first install seeded, a
    // hard-link clone of v1; from scratch with --no-seed-spare), then v2 -> v3 (steady state:
    // staged from the tree v2's switch retired).
    std::vector<Row> inc, inc3;
    prep({w + "/src2", r + "/dp"});
    inc.push_back(Ours(engine, "despool refresh (incremental)", r + "/dp", 2, w + "/src2", want2));
    if (!f.engine_only) {
      prep({w + "/src2", r + "/rs1"});
      inc.push_back(Tool("rsync -a --delete --delay-updates",
                         "rsync -a --delete --delay-updates " + Q(w + "/src2/") + " " + Q(r + "/rs1/"),
                         r + "/rs1", want2));
      prep({w + "/src2", r + "/ld1"});
      inc.push_back(Tool("rsync -a --delete --link-dest",
                         "rsync -a --delete --link-dest=" + Q(r + "/ld1") + " " + Q(w + "/src2/") +
                             " " + Q(r + "/ld2/"),
                         r + "/ld2", want2));
      prep({w + "/src2"});
      inc.push_back(Tool("cp -a (full copy)", "cp -a " + Q(w + "/src2") + " " + Q(r + "/cp2"),
                         r + "/cp2", want2));
    }
    Print(std::string("Incremental refresh v1->v2, ") + std::to_string(f.changed_pct) +
              "% changed, staged from " +
              (f.seed_spare ? "the spare the install seeded" : "scratch (no seeded spare)") +
              " (" + label + " cache)",
          inc, inc[0].secs);
    prep({w + "/src3", r + "/dp"});
    inc3.push_back(Ours(engine, "despool refresh (steady state)", r + "/dp", 3, w + "/src3", want3));
    if (!f.engine_only) {
      prep({w + "/src3", r + "/rs1"});
      inc3.push_back(Tool("rsync -a --delete --delay-updates",
                          "rsync -a --delete --delay-updates " + Q(w + "/src3/") + " " + Q(r + "/rs1/"),
                          r + "/rs1", want3));
      prep({w + "/src3", r + "/ld2"});
      inc3.push_back(Tool("rsync -a --delete --link-dest",
                          "rsync -a --delete --link-dest=" + Q(r + "/ld2") + " " + Q(w + "/src3/") +
                              " " + Q(r + "/ld3/"),
                          r + "/ld3", want3));
    }
    Print(std::string("Incremental refresh v2->v3, ") + std::to_string(f.changed_pct) +
              "% changed, staged from the retired tree (" + label + " cache)",
          inc3, inc3[0].secs);
    std::uint64_t next_version = 4;
    std::optional<std::pair<double, double>> rounds;
    if (!f.engine_only && f.rounds > 0) {
      rounds = Rounds(engine, f.rounds, w, r, &next_version, want2, want3, prep, label);
    }
    if (!cold && f.repeat > 0) Repeat(engine, f.repeat, r + "/dp", w, want2, want3, next_version);
    if (!f.engine_only) {
      // Ratios of times without the tools' `sync` (ours include every fsync): conservative.
      std::printf("\n  targets, %s cache (>= 2x faster than rsync --delay-updates, >= 5x faster "
                  "than rsync --link-dest):\n",
                  label);
      if (rounds) {
        std::printf("    steady state, ratio of the medians of %d rounds: %.2fx, %.2fx\n", f.rounds,
                    rounds->first, rounds->second);
      }
      std::printf("    single runs: steady state %.2fx, %.2fx; first after the install %.2fx, %.2fx\n",
                  inc3[1].secs / inc3[0].secs, inc3[2].secs / inc3[0].secs,
                  inc[1].secs / inc[0].secs, inc[2].secs / inc[0].secs);
    }
    if (!cold && !f.engine_only) {
      std::printf("  full refresh vs cp -a + sync: %.2fx (target >= 1)\n",
                  full[1].secs_sync / full[0].secs);
      InUseBench(r + "/dp/pkg", p);
    }
  }
  if (!f.keep) {
    Sh("rm -rf " + Q(w));
  }
  return 0;
}
