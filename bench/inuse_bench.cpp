// In-use check benchmark (issue 4): 10,000 files in 100 directories, one held open by a child
// process at a random index. Times the lease probe, the /proc probe, the auto probe and
// `fuser` on the same files; a run counts only if its result names the held file.
//
//   inuse_bench [--files N] [--dirs N] [--runs N] [--dir PARENT]
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../tests/workers/test_holders.h"
#include "despool/workers/inuse.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using despool::testing::HolderProcess;
using namespace despool::workers;
using Clock = std::chrono::steady_clock;

struct Row {
  std::string name;
  std::vector<double> ms;
  std::vector<double> cpu_ms;  // user + system CPU time (all threads; fuser: the child)
  std::string note;
  bool valid = true;
};

double CpuMs(int who) {
  rusage ru{};
  ::getrusage(who, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0
                   : (v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2);
}

// Runs argv, stdout (and stderr) captured into *out when out != nullptr. Returns the exit status.
int Spawn(const std::vector<std::string>& args, std::string* out) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  int pipefd[2] = {-1, -1};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (out) {
    if (::pipe2(pipefd, O_CLOEXEC) != 0) return -1;
    posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
    posix_spawn_file_actions_adddup2(&actions, pipefd[1], 2);
  } else {
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  }
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (out) {
    ::close(pipefd[1]);
    char buf[65536];
    ssize_t n;
    while ((n = ::read(pipefd[0], buf, sizeof(buf))) > 0)
      out->append(buf, static_cast<std::size_t>(n));
    ::close(pipefd[0]);
  }
  if (rc != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

int main(int argc, char** argv) {
  int files = 10000, dirs = 100, runs = 7;
  std::string parent = "/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--files")
      files = std::atoi(argv[i + 1]);
    else if (a == "--dirs")
      dirs = std::atoi(argv[i + 1]);
    else if (a == "--runs")
      runs = std::atoi(argv[i + 1]);
    else if (a == "--dir")
      parent = argv[i + 1];
    else {
      std::fprintf(stderr, "usage: %s [--files N] [--dirs N] [--runs N] [--dir PARENT]\n", argv[0]);
      return 2;
    }
  }
  if (auto st = IgnoreLeaseBreakSignal(); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    return 1;
  }

  std::string tmpl = parent + "/inuse-bench-XXXXXX";
  if (!::mkdtemp(tmpl.data())) {
    std::perror("mkdtemp");
    return 1;
  }
  fs::path root = tmpl;
  fs::path pkg = root / "pkg";
  std::vector<std::string> rel;
  rel.reserve(static_cast<std::size_t>(files));
  for (int i = 0; i < files; ++i) {
    char name[64];
    std::snprintf(name, sizeof(name), "d%03d/file-%05d.dat", i % dirs, i);
    rel.push_back(name);
  }
  for (int d = 0; d < dirs; ++d) {
    char name[16];
    std::snprintf(name, sizeof(name), "d%03d", d);
    fs::create_directories(pkg / name);
  }
  for (auto& r : rel) {
    int fd = ::open((pkg / r).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ::write(fd, r.data(), r.size()) < 0) {
      std::perror("create");
      return 1;
    }
    ::close(fd);
  }
  std::sort(rel.begin(), rel.end());
  std::mt19937_64 rng(std::random_device{}());
  std::size_t held_index = std::uniform_int_distribution<std::size_t>(0, rel.size() - 1)(rng);
  const std::string held = rel[held_index];
  HolderProcess holder(HolderProcess::Mode::kOpen, (pkg / held).string());
  if (!holder.ready()) {
    std::fprintf(stderr, "%s\n", holder.error().c_str());
    return 1;
  }
  int dirfd = ::open(pkg.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);

  std::vector<std::string> abs_args = {"fuser", "-s"};
  for (auto& r : rel) abs_args.push_back((pkg / r).string());
  std::vector<std::string> verbose_args = abs_args;
  verbose_args.erase(verbose_args.begin() + 1);  // no -s: prints "path: pid" for each held file

  std::vector<std::string>
      subset;  // 1% of the files, the held one among them: an incremental refresh
  for (std::size_t i = 0; i < rel.size(); i += 100) subset.push_back(rel[i]);
  if (held_index % 100 != 0) subset.push_back(held);

  std::vector<Row> rows;
  auto probe_row = [&](const std::string& label, std::unique_ptr<InUseProbe> probe,
                       const std::vector<std::string>& paths, bool expect_holder) {
    Row row{label + " (" + std::to_string(paths.size()) + " files)", {}, {}, "", true};
    for (int r = 0; r < runs; ++r) {
      double cpu0 = CpuMs(RUSAGE_SELF);
      auto t0 = Clock::now();
      auto report = probe->Check(dirfd, paths);
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      row.cpu_ms.push_back(CpuMs(RUSAGE_SELF) - cpu0);
      if (!report.ok()) {
        row.valid = false;
        row.note = report.error().ToString();
        break;
      }
      bool named =
          std::find(report->in_use.begin(), report->in_use.end(), held) != report->in_use.end();
      bool holder_named = std::any_of(
          report->holders.begin(), report->holders.end(),
          [&](const InUseHolder& h) { return h.pid == holder.pid() && h.path == held; });
      if (!named || report->in_use.size() != 1 || (expect_holder && !holder_named)) {
        row.valid = false;
        row.note = "result does not name the held file";
        break;
      }
      row.ms.push_back(ms);
      row.note =
          report->complete ? "complete" : "INCOMPLETE: " + report->incomplete_reason.substr(0, 70);
      if (expect_holder) row.note += ", holder pid named";
    }
    rows.push_back(std::move(row));
  };
  probe_row("lease probe", MakeLeaseProbe(), rel, false);
  probe_row("lease, 1 thread", MakeLeaseProbe({1, 2000}), rel, false);
  probe_row("/proc probe", MakeProcProbe(), rel, true);
  probe_row("auto probe", MakeAutoProbe(), rel, true);
  probe_row("lease probe", MakeLeaseProbe(), subset, false);
  probe_row("auto probe", MakeAutoProbe(), subset, true);

  auto fuser_row = [&](const std::string& label, const std::vector<std::string>& args,
                       bool verbose) {
    Row row{label, {}, {}, "", true};
    for (int r = 0; r < runs; ++r) {
      std::string out;
      double cpu0 = CpuMs(RUSAGE_CHILDREN);
      auto t0 = Clock::now();
      int status = Spawn(args, verbose ? &out : nullptr);
      double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      row.cpu_ms.push_back(CpuMs(RUSAGE_CHILDREN) - cpu0);
      // -s: exit 0 means "something is in use"; without -s the output must name file and pid.
      bool ok = status == 0 &&
                (!verbose || (out.find(held) != std::string::npos &&
                              out.find(std::to_string(holder.pid())) != std::string::npos));
      if (!ok) {
        row.valid = false;
        row.note = "fuser exit " + std::to_string(status);
        break;
      }
      row.ms.push_back(ms);
      row.note = verbose ? "output names file and pid" : "exit 0 (in use)";
    }
    rows.push_back(std::move(row));
  };
  fuser_row("fuser -s (" + std::to_string(rel.size()) + " paths)", abs_args, false);
  fuser_row("fuser (" + std::to_string(rel.size()) + " paths)", verbose_args, true);

  std::printf("in-use check: %d files in %d dirs under %s, held: %s (pid %d), %d runs each\n",
              files, dirs, pkg.c_str(), held.c_str(), static_cast<int>(holder.pid()), runs);
  double load[3] = {0, 0, 0};
  ::getloadavg(load, 3);
  std::printf("load average %.2f (the machine is shared: compare medians within one run)\n",
              load[0]);
  std::printf("%-28s %10s %8s %8s %10s  %s\n", "method", "median ms", "min ms", "max ms", "CPU ms",
              "result");
  const double fuser_ms =
      rows.size() >= 2 && rows[rows.size() - 2].valid ? Median(rows[rows.size() - 2].ms) : 0;
  for (auto& row : rows) {
    if (!row.valid || row.ms.empty()) {
      std::printf("%-28s %10s %8s %8s %10s  NOT COUNTED: %s\n", row.name.c_str(), "-", "-", "-",
                  "-", row.note.c_str());
      continue;
    }
    std::printf("%-28s %10.2f %8.2f %8.2f %10.2f  %s", row.name.c_str(), Median(row.ms),
                *std::min_element(row.ms.begin(), row.ms.end()),
                *std::max_element(row.ms.begin(), row.ms.end()), Median(row.cpu_ms),
                row.note.c_str());
    if (fuser_ms > 0) std::printf(" [fuser -s / this = %.1fx]", fuser_ms / Median(row.ms));
    std::printf("\n");
  }
  ::close(dirfd);
  holder.Stop();
  fs::remove_all(root);
  return 0;
}
