// The OS interface of the refresh engine: every filesystem call the engine makes goes through
// an Os, so tests can fail any of them (ENOSPC mid-copy, EIO on fsync, EXDEV...) or "crash" the
// engine between any two of them, and list every call point by recording a run.
//
// Conventions: each method is a thin wrapper of the syscall of the same name, with the same
// arguments and the same return convention (-1 and errno set on failure). No method retries on
// EINTR; the caller does. All path arguments are relative to a directory fd (the engine never
// resolves absolute paths below the DP root).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace despool::workers {

struct DirEntry {
  std::string name;         // never "." or ".."
  unsigned char type = 0;   // DT_* from readdir (DT_UNKNOWN possible: stat it)
  ino_t ino = 0;
};

class Os {
 public:
  virtual ~Os() = default;

  virtual int OpenAt(int dirfd, const char* path, int flags, mode_t mode) = 0;
  virtual int Close(int fd) = 0;
  virtual int MkdirAt(int dirfd, const char* path, mode_t mode) = 0;
  virtual int RenameAt2(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                        unsigned int flags) = 0;
  virtual int LinkAt(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                     int flags) = 0;
  virtual int UnlinkAt(int dirfd, const char* path, int flags) = 0;
  virtual int SymlinkAt(const char* target, int newdirfd, const char* linkpath) = 0;
  virtual ssize_t ReadlinkAt(int dirfd, const char* path, char* buf, size_t size) = 0;
  virtual int FstatAt(int dirfd, const char* path, struct stat* st, int flags) = 0;
  virtual int Fstat(int fd, struct stat* st) = 0;
  virtual int Fstatvfs(int fd, struct statvfs* st) = 0;
  virtual int Fsync(int fd) = 0;
  virtual int Syncfs(int fd) = 0;
  virtual int SyncFileRange(int fd, off_t offset, off_t nbytes, unsigned int flags) = 0;
  virtual ssize_t CopyFileRange(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len,
                                unsigned int flags) = 0;
  virtual ssize_t Read(int fd, void* buf, size_t count) = 0;
  virtual ssize_t Pread(int fd, void* buf, size_t count, off_t offset) = 0;
  virtual ssize_t Write(int fd, const void* buf, size_t count) = 0;
  virtual int Fchmod(int fd, mode_t mode) = 0;
  virtual int Futimens(int fd, const struct timespec times[2]) = 0;
  virtual int UtimensAt(int dirfd, const char* path, const struct timespec times[2], int flags) = 0;
  virtual int Flock(int fd, int operation) = 0;
  // Every entry of the directory open at dirfd except "." and ".." (fdopendir on a dup of the
  // fd, rewound first; dirfd stays open and usable). 0 or -1 with errno.
  virtual int ReadDir(int dirfd, std::vector<DirEntry>* out) = 0;
};

// The process-wide real implementation (stateless, thread-safe).
Os& RealOs();

// ---- Fault injection (tests) ----

// Thrown by FaultInjectingOs at a crash point. Nothing in the engine catches it, so it unwinds
// like a kill -9: fds are closed by RAII, no cleanup runs (after a crash every further call but
// Close fails with EIO without touching the filesystem).
struct InjectedCrash {
  std::uint64_t call_index = 0;
  std::string op;
};

struct FaultRule {
  enum class Action { kFail, kCrashBefore, kCrashAfter };
  std::string op;            // method name ("CopyFileRange"...), empty = any call
  std::uint64_t nth = 1;     // 1-based: the nth call matching `op` (counted from rule creation)
  Action action = Action::kFail;
  int err = EIO;             // errno for kFail
  bool repeat = false;       // kFail: also fail every later matching call
};

struct OsCall {
  std::uint64_t index = 0;   // 1-based over all calls through this wrapper
  std::string op;
  std::string arg;           // the path argument, when the call has one
};

// Wraps another Os; counts, records, and fails or crashes calls according to rules.
// Close is passed through and is not a call point (it has no effect on disk and runs in
// destructors).
// Thread-safe (one mutex), deterministic for a single-threaded caller.
class FaultInjectingOs : public Os {
 public:
  explicit FaultInjectingOs(Os& inner = RealOs());

  void AddRule(FaultRule rule);
  void ClearRules();
  void set_recording(bool on);
  // Fsync/Syncfs/SyncFileRange still count as call points but do nothing (fast tests: a simulated crash
  // is a kill -9, for which the page cache survives).
  void set_sync_noop(bool on);
  // Called after every call point has executed (outside the lock, on the calling thread):
  // tests use it to check an invariant after each single step of the engine.
  void set_observer(std::function<void(const OsCall&)> observer);
  std::vector<OsCall> calls() const;     // recorded calls (when recording)
  std::uint64_t call_count() const;      // all calls so far
  bool crashed() const;

  int OpenAt(int dirfd, const char* path, int flags, mode_t mode) override;
  int Close(int fd) override;
  int MkdirAt(int dirfd, const char* path, mode_t mode) override;
  int RenameAt2(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                unsigned int flags) override;
  int LinkAt(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
             int flags) override;
  int UnlinkAt(int dirfd, const char* path, int flags) override;
  int SymlinkAt(const char* target, int newdirfd, const char* linkpath) override;
  ssize_t ReadlinkAt(int dirfd, const char* path, char* buf, size_t size) override;
  int FstatAt(int dirfd, const char* path, struct stat* st, int flags) override;
  int Fstat(int fd, struct stat* st) override;
  int Fstatvfs(int fd, struct statvfs* st) override;
  int Fsync(int fd) override;
  int Syncfs(int fd) override;
  int SyncFileRange(int fd, off_t offset, off_t nbytes, unsigned int flags) override;
  ssize_t CopyFileRange(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len,
                        unsigned int flags) override;
  ssize_t Read(int fd, void* buf, size_t count) override;
  ssize_t Pread(int fd, void* buf, size_t count, off_t offset) override;
  ssize_t Write(int fd, const void* buf, size_t count) override;
  int Fchmod(int fd, mode_t mode) override;
  int Futimens(int fd, const struct timespec times[2]) override;
  int UtimensAt(int dirfd, const char* path, const struct timespec times[2], int flags) override;
  int Flock(int fd, int operation) override;
  int ReadDir(int dirfd, std::vector<DirEntry>* out) override;

 private:
  // Decides the fate of one call: returns true to proceed (and sets *crash_after), false with
  // errno set to fail it; throws InjectedCrash for kCrashBefore.
  bool Enter(const char* op, const char* arg, bool* crash_after);
  template <typename R, typename F>
  R Run(const char* op, const char* arg, F&& call);

  struct ActiveRule {
    FaultRule rule;
    std::uint64_t seen = 0;
    bool fired = false;
  };
  Os& inner_;
  mutable std::mutex mu_;
  std::vector<ActiveRule> rules_;
  std::vector<OsCall> calls_;
  std::uint64_t count_ = 0;
  bool recording_ = false;
  bool sync_noop_ = false;
  std::function<void(const OsCall&)> observer_;
  bool crashed_ = false;
};

}  // namespace despool::workers
