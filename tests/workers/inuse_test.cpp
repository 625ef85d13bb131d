// In-use probes against real holder processes (open descriptor, mmap only, running executable),
// plus a fake /proc tree for the cases a live system cannot produce on demand.
#include "despool/workers/inuse.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "workers/test_holders.h"

namespace despool::workers {
namespace {

namespace fs = std::filesystem;
using despool::testing::HolderProcess;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr uid_t kNobody = 65534;

void WriteFile(const fs::path& p, const std::string& content) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out << content;
  ASSERT_TRUE(out.good()) << p;
}

// A package tree in a fresh temp dir: a.txt, sub/b.txt, sub/deep/c.bin, bin/tool (a copy of
// /bin/sleep). Directories are 0755 so a test child running as nobody can walk them.
class InUseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { ASSERT_TRUE(IgnoreLeaseBreakSignal().ok()); }

  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "inuse-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    tmp_ = tmpl;
    fs::permissions(tmp_, fs::perms(0755));
    pkg_ = tmp_ / "pkg";
    WriteFile(pkg_ / "a.txt", std::string(5000, 'a'));
    WriteFile(pkg_ / "sub/b.txt", std::string(100, 'b'));
    WriteFile(pkg_ / "sub/deep/c.bin", std::string(8192, 'c'));
    fs::create_directories(pkg_ / "bin");
    HolderProcess::CopyExecutable("/bin/sleep", (pkg_ / "bin/tool").string());
    dirfd_ = ::open(pkg_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(dirfd_, 0);
  }
  void TearDown() override {
    if (dirfd_ >= 0) ::close(dirfd_);
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }

  std::vector<std::string> AllFiles() const {
    return {"a.txt", "bin/tool", "sub/b.txt", "sub/deep/c.bin"};
  }
  std::string Abs(const std::string& rel) const { return (pkg_ / rel).string(); }

  fs::path tmp_;
  fs::path pkg_;
  int dirfd_ = -1;
};

std::unique_ptr<InUseProbe> MakeProbe(const std::string& kind) {
  if (kind == "lease") return MakeLeaseProbe();
  if (kind == "proc") return MakeProcProbe();
  return MakeAutoProbe();
}

// Whether we (even as root) may not inspect this process: on some machines a supervisor holds
// more capabilities than we do, so ptrace-mode access to its fd/maps is refused.
// A process that has exited since the scan cannot be re-checked; it counts as hidden.
bool ProcessHiddenFromUs(long pid) {
  std::string dir = "/proc/" + std::to_string(pid);
  int maps = ::open((dir + "/maps").c_str(), O_RDONLY | O_CLOEXEC);
  if (maps < 0) return errno == EACCES || errno == EPERM || errno == ENOENT || errno == ESRCH;
  char c;
  bool maps_denied = ::read(maps, &c, 1) < 0 && (errno == EACCES || errno == EPERM);
  ::close(maps);
  if (maps_denied) return true;
  std::error_code ec;
  for (fs::directory_iterator it(dir + "/fd", ec), end; !ec && it != end; it.increment(ec)) {
    struct stat st {};
    if (::stat(it->path().c_str(), &st) != 0 && (errno == EACCES || errno == EPERM)) return true;
  }
  return ec == std::errc::permission_denied;
}

// A /proc scan of the live system is complete unless some process really is hidden from us:
// then it must be incomplete, and every pid its reason names must be one of those.
void ExpectCompleteUnlessProcessesHidden(const InUseReport& r) {
  if (r.complete) return;
  std::vector<long> named;
  for (std::size_t pos = r.incomplete_reason.find("pid "); pos != std::string::npos;
       pos = r.incomplete_reason.find("pid ", pos + 4)) {
    named.push_back(std::strtol(r.incomplete_reason.c_str() + pos + 4, nullptr, 10));
  }
  ASSERT_FALSE(named.empty()) << r.incomplete_reason;
  for (long pid : named)
    EXPECT_TRUE(ProcessHiddenFromUs(pid)) << "pid " << pid << " in: " << r.incomplete_reason;
}

// The lease and auto probes see every file exactly here; a /proc scan may meet hidden processes.
void ExpectComplete(const std::string& probe, const InUseReport& r) {
  if (probe == "proc") {
    ExpectCompleteUnlessProcessesHidden(r);
  } else {
    EXPECT_TRUE(r.complete) << r.incomplete_reason;
  }
}

bool HolderNamed(const InUseReport& r, pid_t pid, const std::string& path) {
  return std::any_of(r.holders.begin(), r.holders.end(),
                     [&](const InUseHolder& h) { return h.pid == pid && h.path == path; });
}

// ---- every probe x every way of holding a file -------------------------------------------

struct HoldCase {
  std::string probe;
  HolderProcess::Mode mode;
  std::string path;
};

class InUseHoldTest : public InUseTest, public ::testing::WithParamInterface<HoldCase> {};

TEST_P(InUseHoldTest, DetectsHolderInSeparateProcess) {
  const HoldCase& c = GetParam();
  std::unique_ptr<HolderProcess> holder;
  if (c.mode == HolderProcess::Mode::kExec) {
    holder = std::make_unique<HolderProcess>(c.mode, Abs(c.path), std::vector<std::string>{"3600"});
  } else {
    holder = std::make_unique<HolderProcess>(c.mode, Abs(c.path));
  }
  ASSERT_TRUE(holder->ready()) << holder->error();

  auto probe = MakeProbe(c.probe);
  auto report = probe->Check(dirfd_, AllFiles());
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  ExpectComplete(c.probe, *report);
  EXPECT_THAT(report->in_use, ElementsAre(c.path));
  if (c.probe != "lease") {
    EXPECT_TRUE(HolderNamed(*report, holder->pid(), c.path)) << "holder pid " << holder->pid();
    auto it = std::find_if(report->holders.begin(), report->holders.end(),
                           [&](const InUseHolder& h) { return h.pid == holder->pid(); });
    ASSERT_NE(it, report->holders.end());
    EXPECT_EQ(it->command, c.mode == HolderProcess::Mode::kExec ? "tool" : "inuse-holder");
  } else {
    EXPECT_THAT(report->holders, IsEmpty());
  }

  // Released: free again (the kernel dropped the holder's files when it was reaped).
  holder->Stop();
  auto after = probe->Check(dirfd_, AllFiles());
  ASSERT_TRUE(after.ok()) << after.error().ToString();
  ExpectComplete(c.probe, *after);
  EXPECT_THAT(after->in_use, IsEmpty());
  EXPECT_THAT(after->holders, IsEmpty());
}

std::vector<HoldCase> AllHoldCases() {
  std::vector<HoldCase> cases;
  for (const char* probe : {"lease", "proc", "auto"}) {
    cases.push_back({probe, HolderProcess::Mode::kOpen, "sub/deep/c.bin"});
    cases.push_back({probe, HolderProcess::Mode::kMmap, "a.txt"});
    cases.push_back({probe, HolderProcess::Mode::kExec, "bin/tool"});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Probes, InUseHoldTest, ::testing::ValuesIn(AllHoldCases()),
                         [](const ::testing::TestParamInfo<HoldCase>& info) {
                           const char* mode = info.param.mode == HolderProcess::Mode::kOpen ? "Open"
                                              : info.param.mode == HolderProcess::Mode::kMmap
                                                  ? "MmapOnly"
                                                  : "Exec";
                           return info.param.probe + "_" + mode;
                         });

// ---- per-probe behaviour on paths ----------------------------------------------------------

class InUsePathTest : public InUseTest, public ::testing::WithParamInterface<std::string> {};

TEST_P(InUsePathTest, NothingHeldIsFree) {
  auto report = MakeProbe(GetParam())->Check(dirfd_, AllFiles());
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  ExpectComplete(GetParam(), *report);
  EXPECT_THAT(report->in_use, IsEmpty());
}

TEST_P(InUsePathTest, VanishedAndMissingPathsAreNotInUse) {
  HolderProcess holder(HolderProcess::Mode::kOpen, Abs("sub/b.txt"));
  ASSERT_TRUE(holder.ready()) << holder.error();
  fs::remove(pkg_ / "sub/deep/c.bin");
  std::vector<std::string> paths = {"sub/deep/c.bin", "gone.txt", "nodir/x", "a.txt/child",
                                    "sub/b.txt"};
  auto report = MakeProbe(GetParam())->Check(dirfd_, paths);
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  ExpectComplete(GetParam(), *report);
  EXPECT_THAT(report->in_use, ElementsAre("sub/b.txt"));
}

TEST_P(InUsePathTest, NeverFollowsSymlinks) {
  // A symlink (final or intermediate component) is not followed: the held target is reported
  // under its own path only, and a link leading out of the package is never inspected.
  fs::create_symlink("a.txt", pkg_ / "link.txt");
  fs::create_directory_symlink("sub", pkg_ / "sublink");
  HolderProcess holder(HolderProcess::Mode::kOpen, Abs("a.txt"));
  ASSERT_TRUE(holder.ready()) << holder.error();
  HolderProcess outside(HolderProcess::Mode::kOpen, "/bin/sleep");
  ASSERT_TRUE(outside.ready()) << outside.error();
  fs::create_symlink("/bin/sleep", pkg_ / "escape");
  auto report =
      MakeProbe(GetParam())->Check(dirfd_, {"link.txt", "sublink/b.txt", "escape", "a.txt"});
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  EXPECT_THAT(report->in_use, ElementsAre("a.txt"));
}

TEST_P(InUsePathTest, SeveralHoldersAndFiles) {
  HolderProcess h1(HolderProcess::Mode::kOpen, Abs("a.txt"));
  HolderProcess h2(HolderProcess::Mode::kMmap, Abs("a.txt"));
  HolderProcess h3(HolderProcess::Mode::kOpen, Abs("sub/b.txt"));
  ASSERT_TRUE(h1.ready() && h2.ready() && h3.ready()) << h1.error() << h2.error() << h3.error();
  auto report = MakeProbe(GetParam())->Check(dirfd_, AllFiles());
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  EXPECT_THAT(report->in_use, ElementsAre("a.txt", "sub/b.txt"));
  if (GetParam() != "lease") {
    EXPECT_TRUE(HolderNamed(*report, h1.pid(), "a.txt"));
    EXPECT_TRUE(HolderNamed(*report, h2.pid(), "a.txt"));
    EXPECT_TRUE(HolderNamed(*report, h3.pid(), "sub/b.txt"));
  }
}

TEST_P(InUsePathTest, OwnDescriptorCountsAsInUse) {
  int fd = ::open(Abs("a.txt").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto report = MakeProbe(GetParam())->Check(dirfd_, AllFiles());
  ::close(fd);
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  EXPECT_THAT(report->in_use, ElementsAre("a.txt"));
  if (GetParam() != "lease") {
    EXPECT_TRUE(HolderNamed(*report, ::getpid(), "a.txt"));
  }
}

TEST_P(InUsePathTest, RefusesEscapingPaths) {
  for (std::string bad :
       {"../x", "/etc/passwd", "", "sub/../a.txt", "./a.txt", "sub//b.txt", "sub/"}) {
    auto report = MakeProbe(GetParam())->Check(dirfd_, {"a.txt", bad});
    ASSERT_FALSE(report.ok()) << "'" << bad << "'";
    EXPECT_EQ(report.error().code, ErrorCode::kInvalidArgument) << "'" << bad << "'";
  }
}

TEST_P(InUsePathTest, NonRegularEntriesAreNotFiles) {
  ASSERT_EQ(::mkfifo(Abs("fifo").c_str(), 0644), 0);
  auto report = MakeProbe(GetParam())->Check(dirfd_, {"fifo", "sub", "a.txt"});
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  ExpectComplete(GetParam(), *report);
  EXPECT_THAT(report->in_use, IsEmpty());
}

INSTANTIATE_TEST_SUITE_P(Probes, InUsePathTest, ::testing::Values("lease", "proc", "auto"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// ---- lease specifics -----------------------------------------------------------------------

// A process that opens and closes one file in a tight loop until killed.
class ChurningOpener {
 public:
  explicit ChurningOpener(const std::string& path) {
    pid_ = ::fork();
    if (pid_ == 0) {
      for (;;) {
        int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd >= 0) ::close(fd);
      }
    }
  }
  ~ChurningOpener() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

volatile sig_atomic_t g_lease_breaks = 0;

TEST_F(InUseTest, SurvivesLeaseBreaksFromConcurrentOpeners) {
  // Every open by the churning child while we hold our (momentary) lease breaks it: the kernel
  // sends us SIGIO. Counted here by a handler (without SA_RESTART, so interrupted calls are
  // exercised too); with SIG_DFL this process would die. Both verdicts are legitimate for a
  // file opened and closed continuously, but the probe must never fail.
  struct sigaction counting {
  }, old{};
  counting.sa_handler = [](int) { g_lease_breaks = g_lease_breaks + 1; };
  sigemptyset(&counting.sa_mask);
  ASSERT_EQ(::sigaction(SIGIO, &counting, &old), 0);
  g_lease_breaks = 0;
  {
    ChurningOpener churn(Abs("a.txt"));
    ASSERT_GT(churn.pid(), 0);
    auto probe = MakeLeaseProbe();
    int in_use = 0;
    for (int i = 0; i < 3000; ++i) {
      auto report = probe->Check(dirfd_, {"a.txt"});
      ASSERT_TRUE(report.ok()) << report.error().ToString();
      in_use += report->in_use.empty() ? 0 : 1;
    }
    std::printf("lease probe vs churning opener: %d/3000 in use, %d lease breaks signalled\n",
                in_use, static_cast<int>(g_lease_breaks));
  }
  ASSERT_EQ(::sigaction(SIGIO, &old, nullptr), 0);
  auto report = MakeLeaseProbe()->Check(dirfd_, {"a.txt"});
  ASSERT_TRUE(report.ok());
  EXPECT_THAT(report->in_use, IsEmpty());
}

// Takes a write lease on path, has a child open the file (which breaks the lease), and waits
// for the break to be pending before releasing. Returns "" or what went wrong.
std::string BreakOurLease(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "open failed";
  if (::fcntl(fd, F_SETLEASE, F_WRLCK) != 0) {
    ::close(fd);
    return std::string("F_SETLEASE: ") + std::strerror(errno);
  }
  pid_t child = ::fork();
  if (child == 0) {
    int f = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);  // blocks until we release
    ::_exit(f >= 0 ? 0 : 1);
  }
  // A pending break shows as the lease type it must be downgraded to (F_RDLCK for a reader).
  std::string result = "lease break never became pending";
  for (int i = 0; i < 10000; ++i) {
    if (::fcntl(fd, F_GETLEASE) == F_RDLCK) {
      result.clear();
      break;
    }
    ::usleep(1000);  // polling an observable condition, with a 10 s deadline
  }
  ::fcntl(fd, F_SETLEASE, F_UNLCK);
  ::close(fd);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (result.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
    result = "child's open failed";
  return result;
}

TEST_F(InUseTest, LeaseBreakSignalIsSentAndIgnored) {
  // The kernel does signal a lease holder whose lease is broken...
  struct sigaction counting {
  }, ignored{};
  counting.sa_handler = [](int) { g_lease_breaks = g_lease_breaks + 1; };
  sigemptyset(&counting.sa_mask);
  counting.sa_flags = SA_RESTART;
  ASSERT_EQ(::sigaction(SIGIO, &counting, &ignored), 0);
  g_lease_breaks = 0;
  std::string broke = BreakOurLease(Abs("a.txt"));
  ASSERT_EQ(::sigaction(SIGIO, &ignored, nullptr), 0);
  ASSERT_EQ(broke, "");
  EXPECT_GE(g_lease_breaks, 1);
  // ... and with IgnoreLeaseBreakSignal() in force (SetUpTestSuite) that signal is harmless.
  ASSERT_EQ(ignored.sa_handler, SIG_IGN);
  EXPECT_EQ(BreakOurLease(Abs("a.txt")), "");
}

TEST_F(InUseTest, LeaseProbeSplitsWorkOverThreads) {
  std::vector<std::string> paths;
  for (int i = 0; i < 600; ++i) {
    paths.push_back("many/d" + std::to_string(i % 7) + "/f" + std::to_string(i));
    WriteFile(pkg_ / paths.back(), "x");
  }
  std::sort(paths.begin(), paths.end());
  HolderProcess first(HolderProcess::Mode::kOpen, Abs(paths[3]));
  HolderProcess last(HolderProcess::Mode::kMmap, Abs(paths[590]));
  ASSERT_TRUE(first.ready() && last.ready()) << first.error() << last.error();
  for (unsigned threads : {1u, 2u, 3u, 8u}) {
    auto report = MakeLeaseProbe({threads, 50})->Check(dirfd_, paths);
    ASSERT_TRUE(report.ok()) << report.error().ToString();
    EXPECT_THAT(report->in_use, ElementsAre(paths[3], paths[590])) << threads << " threads";
  }
}

TEST_F(InUseTest, LeaseProbeRefusesWhileSigioWouldKill) {
  struct sigaction dfl {
  }, old{};
  dfl.sa_handler = SIG_DFL;
  ASSERT_EQ(::sigaction(SIGIO, &dfl, &old), 0);
  auto report = MakeLeaseProbe()->Check(dirfd_, AllFiles());
  auto fallback = MakeAutoProbe()->Check(dirfd_, AllFiles());
  ASSERT_TRUE(IgnoreLeaseBreakSignal().ok());
  struct sigaction now {};
  ASSERT_EQ(::sigaction(SIGIO, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(report.error().message, HasSubstr("IgnoreLeaseBreakSignal"));
  ASSERT_TRUE(fallback.ok()) << fallback.error().ToString();  // the /proc scan answered
  ExpectCompleteUnlessProcessesHidden(*fallback);
}

// Runs fn in a forked child (dropping to nobody first if asked and we are root) and returns
// what it returned.
std::string RunInChild(bool as_nobody, const std::function<std::string()>& fn) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    if (as_nobody && ::geteuid() == 0 &&
        (::setgroups(0, nullptr) != 0 || ::setresgid(kNobody, kNobody, kNobody) != 0 ||
         ::setresuid(kNobody, kNobody, kNobody) != 0)) {
      ::_exit(2);
    }
    std::string out = fn();
    std::size_t off = 0;
    while (off < out.size()) {
      ssize_t n = ::write(fds[1], out.data() + off, out.size() - off);
      if (n <= 0) ::_exit(3);
      off += static_cast<std::size_t>(n);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    out += "\nchild failed, status " + std::to_string(status);
  return out;
}

std::string RunAsNobody(const std::function<std::string()>& fn) {
  return RunInChild(true, fn);
}

std::string Describe(const Result<InUseReport>& r) {
  if (!r.ok())
    return "error " + std::string(ErrorCodeName(r.error().code)) + ": " + r.error().message;
  std::string s = std::string("complete=") + (r->complete ? "1" : "0") + " in_use=";
  for (auto& p : r->in_use) s += p + ",";
  s += " reason=" + r->incomplete_reason;
  return s;
}

TEST_F(InUseTest, WithoutPrivilegeLeasesFallBackAndNeverReportFree) {
  // As nobody: leases on root's files are refused (EACCES, not the owner, no CAP_LEASE), and
  // the /proc scan cannot read root's processes. The holder is root's: the only honest answers
  // are an error or complete=false — never "not in use".
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create a holder nobody cannot see";
  HolderProcess holder(HolderProcess::Mode::kOpen, Abs("a.txt"));
  ASSERT_TRUE(holder.ready()) << holder.error();
  int dirfd = dirfd_;
  std::string out = RunAsNobody([&] {
    return "lease: " + Describe(MakeLeaseProbe()->Check(dirfd, {"a.txt"})) +
           "\nauto: " + Describe(MakeAutoProbe()->Check(dirfd, {"a.txt"})) + "\n";
  });
  EXPECT_THAT(out, HasSubstr("lease: error failed-precondition"));
  EXPECT_THAT(out, HasSubstr("auto: complete=0"));
  EXPECT_THAT(out, HasSubstr("pid 1: cannot read fd"));
  EXPECT_THAT(out, Not(HasSubstr("child failed")));
}

// ---- auto probe with injected probes -------------------------------------------------------

class FakeProbe final : public InUseProbe {
 public:
  explicit FakeProbe(std::function<Result<InUseReport>(const std::vector<std::string>&)> fn,
                     std::vector<std::vector<std::string>>* calls = nullptr)
      : fn_(std::move(fn)), calls_(calls) {}
  const char* name() const override { return "fake"; }
  Result<InUseReport> Check(int, const std::vector<std::string>& rel_paths) override {
    if (calls_) calls_->push_back(rel_paths);
    return fn_(rel_paths);
  }

 private:
  std::function<Result<InUseReport>(const std::vector<std::string>&)> fn_;
  std::vector<std::vector<std::string>>* calls_;
};

std::unique_ptr<InUseProbe> LeasesUnavailable() {
  return std::make_unique<FakeProbe>([](const std::vector<std::string>&) -> Result<InUseReport> {
    return MakeError(ErrorCode::kFailedPrecondition, "lease probe unavailable: EINVAL (fake)");
  });
}

TEST_F(InUseTest, AutoFallsBackToProcWhenLeasesUnavailable) {
  HolderProcess holder(HolderProcess::Mode::kMmap, Abs("sub/b.txt"));
  ASSERT_TRUE(holder.ready()) << holder.error();
  auto probe = MakeAutoProbe(LeasesUnavailable(), MakeProcProbe());
  auto report = probe->Check(dirfd_, AllFiles());
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  ExpectCompleteUnlessProcessesHidden(*report);
  EXPECT_THAT(report->in_use, ElementsAre("sub/b.txt"));
  EXPECT_TRUE(HolderNamed(*report, holder.pid(), "sub/b.txt"));
}

TEST_F(InUseTest, AutoScansProcOnlyForFilesFoundInUse) {
  HolderProcess holder(HolderProcess::Mode::kOpen, Abs("a.txt"));
  ASSERT_TRUE(holder.ready()) << holder.error();
  // A real /proc probe behind a recording wrapper.
  std::vector<std::vector<std::string>> proc_calls;
  int dirfd = dirfd_;
  auto recording_proc = [&] {
    return std::make_unique<FakeProbe>(
        [dirfd](const std::vector<std::string>& paths) {
          return MakeProcProbe()->Check(dirfd, paths);
        },
        &proc_calls);
  };
  auto report = MakeAutoProbe(MakeLeaseProbe(), recording_proc())->Check(dirfd_, AllFiles());
  ASSERT_TRUE(report.ok()) << report.error().ToString();
  EXPECT_THAT(report->in_use, ElementsAre("a.txt"));
  EXPECT_TRUE(HolderNamed(*report, holder.pid(), "a.txt"));
  ASSERT_EQ(proc_calls.size(), 1u);
  EXPECT_THAT(proc_calls[0], ElementsAre("a.txt"));

  // Nothing in use: the /proc scan is not run at all.
  holder.Stop();
  proc_calls.clear();
  auto free_report = MakeAutoProbe(MakeLeaseProbe(), recording_proc())->Check(dirfd_, AllFiles());
  ASSERT_TRUE(free_report.ok());
  EXPECT_THAT(free_report->in_use, IsEmpty());
  EXPECT_TRUE(proc_calls.empty());
}

TEST_F(InUseTest, AutoKeepsLeaseVerdictWhenHoldersCannotBeNamed) {
  auto lease =
      std::make_unique<FakeProbe>([](const std::vector<std::string>&) -> Result<InUseReport> {
        InUseReport r;
        r.in_use = {"a.txt"};
        return r;
      });
  auto proc =
      std::make_unique<FakeProbe>([](const std::vector<std::string>&) -> Result<InUseReport> {
        InUseReport r;
        r.complete = false;
        r.incomplete_reason = "pid 7: cannot read fd";
        return r;
      });
  auto report = MakeAutoProbe(std::move(lease), std::move(proc))->Check(dirfd_, AllFiles());
  ASSERT_TRUE(report.ok());
  EXPECT_THAT(report->in_use, ElementsAre("a.txt"));
  EXPECT_THAT(report->holders, IsEmpty());
  EXPECT_TRUE(report->complete);  // the lease answer about every file is exact
}

TEST_F(InUseTest, AutoFallbackIncompleteIsNeverFree) {
  auto proc =
      std::make_unique<FakeProbe>([](const std::vector<std::string>&) -> Result<InUseReport> {
        InUseReport r;
        r.complete = false;
        r.incomplete_reason = "pid 7: cannot read fd";
        return r;
      });
  auto report = MakeAutoProbe(LeasesUnavailable(), std::move(proc))->Check(dirfd_, AllFiles());
  ASSERT_TRUE(report.ok());
  EXPECT_FALSE(report->complete);
  EXPECT_THAT(report->incomplete_reason, HasSubstr("pid 7"));

  auto failing =
      std::make_unique<FakeProbe>([](const std::vector<std::string>&) -> Result<InUseReport> {
        return MakeError(ErrorCode::kFailedPrecondition, "no /proc");
      });
  auto both_fail =
      MakeAutoProbe(LeasesUnavailable(), std::move(failing))->Check(dirfd_, AllFiles());
  ASSERT_FALSE(both_fail.ok());
  EXPECT_THAT(both_fail.error().message, HasSubstr("no /proc"));
  EXPECT_THAT(both_fail.error().message, HasSubstr("lease probe unavailable"));
}

// ---- /proc probe on a fake proc tree -------------------------------------------------------

class FakeProcTest : public InUseTest {
 protected:
  void SetUp() override {
    InUseTest::SetUp();
    proc_ = tmp_ / "proc";
    fs::create_directories(proc_);
    fs::permissions(proc_, fs::perms(0755));
  }
  // A process directory: comm, stat (with flags), an fd dir and maps.
  void AddProcess(int pid, const std::string& comm, unsigned flags,
                  fs::perms fd_perms = fs::perms(0755), const std::string& maps = "") {
    fs::path d = proc_ / std::to_string(pid);
    fs::create_directories(d / "fd");
    WriteFile(d / "comm", comm + "\n");
    WriteFile(d / "stat", std::to_string(pid) + " (" + comm + ") S 1 1 1 0 -1 " +
                              std::to_string(flags) + " 0 0 0 0 0 0 0 0 20 0 1 0\n");
    WriteFile(d / "maps", maps);
    fs::permissions(d, fs::perms(0755));
    fs::permissions(d / "fd", fd_perms);
  }
  std::string MapsLine(const std::string& rel) {
    struct stat st {};
    EXPECT_EQ(::stat(Abs(rel).c_str(), &st), 0);
    char line[256];
    std::snprintf(line, sizeof(line),
                  "7f0000000000-7f0000001000 r--s 00000000 %02x:%02x %llu    %s\n",
                  major(st.st_dev), minor(st.st_dev), static_cast<unsigned long long>(st.st_ino),
                  Abs(rel).c_str());
    return "55d0c0000000-55d0c0001000 r-xp 00000000 00:00 0 \n" + std::string(line);
  }
  fs::path proc_;
};

TEST_F(FakeProcTest, FindsFdAndMapsHoldersAndSkipsVanishedAndKernelThreads) {
  AddProcess(10, "opener", 0);
  fs::create_symlink(Abs("a.txt"), proc_ / "10/fd/3");
  fs::create_symlink("/dev/null", proc_ / "10/fd/0");
  AddProcess(11, "mapper", 0, fs::perms(0755), MapsLine("sub/deep/c.bin"));
  AddProcess(2, "kthreadd", 0x00208040, fs::perms::none);  // PF_KTHREAD: unreadable fd dir is fine
  AddProcess(13, "zombie", 0, fs::perms::none);            // a zombie holds nothing either
  WriteFile(proc_ / "13/stat", "13 (zombie) Z 1 1 1 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0\n");
  fs::create_directories(proc_ / "12");    // vanished: no fd, no maps
  fs::create_directories(proc_ / "self");  // not a pid
  WriteFile(proc_ / "meminfo", "");

  int dirfd = dirfd_;
  std::string proc = proc_.string();
  auto run = [dirfd, proc] {
    auto r =
        MakeProcProbe(proc)->Check(dirfd, {"a.txt", "bin/tool", "sub/b.txt", "sub/deep/c.bin"});
    std::string s = Describe(r);
    if (r.ok()) {
      for (auto& h : r->holders)
        s += " holder=" + std::to_string(h.pid) + ":" + h.command + ":" + h.path;
    }
    return s;
  };
  std::string out = RunAsNobody(run);  // as nobody the mode-000 fd dir really is unreadable
  EXPECT_EQ(out,
            "complete=1 in_use=a.txt,sub/deep/c.bin, reason= holder=10:opener:a.txt "
            "holder=11:mapper:sub/deep/c.bin");
}

TEST_F(FakeProcTest, UnreadableProcessMakesReportIncompleteNamingThePid) {
  AddProcess(10, "opener", 0);
  fs::create_symlink(Abs("a.txt"), proc_ / "10/fd/3");
  // A user process whose descriptors we may not inspect, though its maps are readable: it
  // makes the report incomplete and is still named as a holder of what it maps.
  AddProcess(4242, "secretive", 0, fs::perms::none, MapsLine("sub/deep/c.bin"));
  int dirfd = dirfd_;
  std::string proc = proc_.string();
  std::string out = RunAsNobody([dirfd, proc] {
    auto r = MakeProcProbe(proc)->Check(dirfd, {"a.txt", "sub/b.txt", "sub/deep/c.bin"});
    std::string s = "proc: " + Describe(r);
    if (r.ok()) {
      for (auto& h : r->holders) s += " holder=" + std::to_string(h.pid) + ":" + h.path;
    }
    s += "\nauto: " +
         Describe(
             MakeAutoProbe(LeasesUnavailable(), MakeProcProbe(proc))->Check(dirfd, {"sub/b.txt"}));
    return s;
  });
  EXPECT_THAT(out, HasSubstr("proc: complete=0 in_use=a.txt,sub/deep/c.bin, reason="));
  EXPECT_THAT(out, HasSubstr("pid 4242: cannot read fd"));
  EXPECT_THAT(out, HasSubstr("holder=10:a.txt holder=4242:sub/deep/c.bin"));
  // Nothing found in use, but one process unseen: not "free".
  EXPECT_THAT(out, HasSubstr("auto: complete=0 in_use= reason="));
}

TEST_F(InUseTest, HidepidProcMountIsIncomplete) {
  // A private procfs mounted with hidepid=invisible in a child's own mount namespace: the scan
  // cannot know what it was not shown, so it must say so.
  std::string mnt = (tmp_ / "hidden-proc").string();
  fs::create_directories(mnt);
  int dirfd = dirfd_;
  std::string out = RunInChild(/*as_nobody=*/false, [&]() -> std::string {
    if (::unshare(CLONE_NEWNS) != 0) return "skip: unshare: " + std::string(std::strerror(errno));
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
      return "skip: make-private";
    if (::mount("proc", mnt.c_str(), "proc", 0, "hidepid=invisible") != 0) {
      return "skip: mount proc: " + std::string(std::strerror(errno));
    }
    std::string plain = Describe(MakeProcProbe(mnt)->Check(dirfd, {"a.txt"}));
    return plain;
  });
  if (out.rfind("skip:", 0) == 0) GTEST_SKIP() << out;
  EXPECT_THAT(out, HasSubstr("complete=0"));
  EXPECT_THAT(out, HasSubstr("hidepid"));
}

TEST_F(FakeProcTest, MissingProcRootIsAnError) {
  auto r = MakeProcProbe((tmp_ / "no-such-proc").string())->Check(dirfd_, {"a.txt"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kFailedPrecondition);
}

}  // namespace
}  // namespace despool::workers
