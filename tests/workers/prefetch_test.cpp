// The cold-cache hints (engine/prefetch.h): they read only inside the tree they are given,
// never through a symlink, and say how much they started.
#include "engine/prefetch.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "workers/engine_test_util.h"

namespace despool::enginetest {
namespace {

class PrefetchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tree = tmp / "tree";
    outside = tmp / "outside";
    WriteFile(tree + "/a.bin", Content("a", 5000));
    WriteFile(tree + "/d1/b.bin", Content("b", 9000));
    WriteFile(tree + "/d1/d2/d3/c.bin", Content("c", 100));
    fs::create_directories(tree + "/empty");
    WriteFile(outside + "/secret.bin", Content("s", 4000));
    WriteFile(outside + "/sub/deeper/x", "x");
    fs::create_symlink(outside, tree + "/d1/to-outside");  // a directory symlink
    fs::create_symlink(outside + "/secret.bin", tree + "/file-link");
    fs::create_symlink("../a.bin", tree + "/d1/up-link");  // in the tree, still a symlink
    ASSERT_EQ(::mkfifo((tree + "/fifo").c_str(), 0644), 0);
    fd = ::open(tree.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
  }
  // openat2 (Linux 5.6), unless a seccomp filter refuses it: without it there are no file hints.
  static bool HaveOpenat2() {
    struct open_how how {};
    how.flags = O_RDONLY | O_DIRECTORY | O_CLOEXEC;
    const long r = ::syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof how);
    if (r >= 0) ::close(static_cast<int>(r));
    return r >= 0;
  }
  void TearDown() override {
    if (fd >= 0) ::close(fd);
  }

  TempDir tmp;
  std::string tree, outside;
  int fd = -1;
};

TEST_F(PrefetchTest, FilesAreReadAheadOnlyBeneathTheTreeAndNeverThroughASymlink) {
  using workers::internal::PrefetchFiles;
  if (!HaveOpenat2()) GTEST_SKIP() << "no openat2 here: PrefetchFiles starts nothing";
  EXPECT_EQ(PrefetchFiles(fd, {"a.bin", "d1/b.bin", "d1/d2/d3/c.bin"}), 3u);
  // Through a symlink (to a file outside, to a dir outside, within the tree), out by "..",
  // absolute, a FIFO, a directory, missing: none started.
  EXPECT_EQ(PrefetchFiles(fd, {"file-link", "d1/to-outside/secret.bin", "d1/up-link",
                               "../outside/secret.bin", "d1/../../outside/secret.bin",
                               outside + "/secret.bin", "fifo", "d1", "missing.bin"}),
            0u);
  EXPECT_EQ(PrefetchFiles(fd, {"fifo", "a.bin", "file-link"}), 1u);
}

TEST_F(PrefetchTest, AStopRequestedStopsBoth) {
  std::stop_source stop;
  stop.request_stop();
  EXPECT_EQ(workers::internal::PrefetchFiles(fd, {"a.bin", "d1/b.bin"}, stop.get_token()), 0u);
  // The tree itself was listed to find its subtrees; none of them is.
  EXPECT_EQ(workers::internal::PrefetchDirectories(fd, 2, stop.get_token()), 1u);
}

TEST_F(PrefetchTest, DirectoriesAreListedOnlyBelowTheTree) {
  using workers::internal::PrefetchDirectories;
  // The tree itself, d1, d1/d2, d1/d2/d3, empty: the symlinked dir (and what is below it) is
  // not entered, on one thread or several.
  EXPECT_EQ(PrefetchDirectories(fd, 1), 5u);
  EXPECT_EQ(PrefetchDirectories(fd, 4), 5u);
  fs::create_directories(tree + "/d4/d5");
  EXPECT_EQ(PrefetchDirectories(fd, 4), 7u);
}

}  // namespace
}  // namespace despool::enginetest
