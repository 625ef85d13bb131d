// FaultInjectingOs: counts, records, fails and "crashes" calls for tests.
#include <cerrno>

#include "despool/workers/os.h"

namespace despool::workers {

FaultInjectingOs::FaultInjectingOs(Os& inner) : inner_(inner) {}

void FaultInjectingOs::AddRule(FaultRule rule) {
  std::lock_guard lock(mu_);
  rules_.push_back(ActiveRule{std::move(rule)});
}

void FaultInjectingOs::ClearRules() {
  std::lock_guard lock(mu_);
  rules_.clear();
}

void FaultInjectingOs::set_recording(bool on) {
  std::lock_guard lock(mu_);
  recording_ = on;
}

void FaultInjectingOs::set_sync_noop(bool on) {
  std::lock_guard lock(mu_);
  sync_noop_ = on;
}

void FaultInjectingOs::set_observer(std::function<void(const OsCall&)> observer) {
  std::lock_guard lock(mu_);
  observer_ = std::move(observer);
}

std::vector<OsCall> FaultInjectingOs::calls() const {
  std::lock_guard lock(mu_);
  return calls_;
}

std::uint64_t FaultInjectingOs::call_count() const {
  std::lock_guard lock(mu_);
  return count_;
}

bool FaultInjectingOs::crashed() const {
  std::lock_guard lock(mu_);
  return crashed_;
}

bool FaultInjectingOs::Enter(const char* op, const char* arg, bool* crash_after) {
  std::lock_guard lock(mu_);
  *crash_after = false;
  if (crashed_) {
    errno = EIO;  // a dead process does nothing more
    return false;
  }
  ++count_;
  if (recording_) calls_.push_back(OsCall{count_, op, arg ? arg : ""});
  for (auto& r : rules_) {
    if (!r.rule.op.empty() && r.rule.op != op) continue;
    ++r.seen;
    bool hit = r.seen == r.rule.nth || (r.rule.repeat && r.fired);
    if (!hit) continue;
    r.fired = true;
    switch (r.rule.action) {
      case FaultRule::Action::kFail:
        errno = r.rule.err;
        return false;
      case FaultRule::Action::kCrashBefore:
        crashed_ = true;
        throw InjectedCrash{count_, op};
      case FaultRule::Action::kCrashAfter:
        *crash_after = true;
        break;
    }
  }
  return true;
}

template <typename R, typename F>
R FaultInjectingOs::Run(const char* op, const char* arg, F&& call) {
  bool crash_after = false;
  if (!Enter(op, arg, &crash_after)) return static_cast<R>(-1);
  R r = call();
  std::function<void(const OsCall&)> observer;
  OsCall record;
  {
    std::lock_guard lock(mu_);
    if (observer_) {
      observer = observer_;
      record = OsCall{count_, op, arg ? arg : ""};
    }
  }
  if (observer) {
    int saved = errno;
    observer(record);
    errno = saved;
  }
  if (crash_after) {
    std::uint64_t index;
    {
      std::lock_guard lock(mu_);
      crashed_ = true;
      index = count_;
    }
    throw InjectedCrash{index, op};
  }
  return r;
}

int FaultInjectingOs::OpenAt(int dirfd, const char* path, int flags, mode_t mode) {
  return Run<int>("OpenAt", path, [&] { return inner_.OpenAt(dirfd, path, flags, mode); });
}
int FaultInjectingOs::Close(int fd) {
  // Not a call point: closing changes nothing on disk (a crash before or after it is the same
  // as a crash before the next call), it always happens (the kernel closes a dead process's
  // descriptors too), and it runs in destructors, which must not throw.
  return inner_.Close(fd);
}
int FaultInjectingOs::MkdirAt(int dirfd, const char* path, mode_t mode) {
  return Run<int>("MkdirAt", path, [&] { return inner_.MkdirAt(dirfd, path, mode); });
}
int FaultInjectingOs::RenameAt2(int olddirfd, const char* oldpath, int newdirfd,
                                const char* newpath, unsigned int flags) {
  return Run<int>("RenameAt2", oldpath,
                  [&] { return inner_.RenameAt2(olddirfd, oldpath, newdirfd, newpath, flags); });
}
int FaultInjectingOs::LinkAt(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                             int flags) {
  return Run<int>("LinkAt", oldpath,
                  [&] { return inner_.LinkAt(olddirfd, oldpath, newdirfd, newpath, flags); });
}
int FaultInjectingOs::UnlinkAt(int dirfd, const char* path, int flags) {
  return Run<int>("UnlinkAt", path, [&] { return inner_.UnlinkAt(dirfd, path, flags); });
}
int FaultInjectingOs::SymlinkAt(const char* target, int newdirfd, const char* linkpath) {
  return Run<int>("SymlinkAt", linkpath,
                  [&] { return inner_.SymlinkAt(target, newdirfd, linkpath); });
}
ssize_t FaultInjectingOs::ReadlinkAt(int dirfd, const char* path, char* buf, size_t size) {
  return Run<ssize_t>("ReadlinkAt", path,
                      [&] { return inner_.ReadlinkAt(dirfd, path, buf, size); });
}
int FaultInjectingOs::FstatAt(int dirfd, const char* path, struct stat* st, int flags) {
  return Run<int>("FstatAt", path, [&] { return inner_.FstatAt(dirfd, path, st, flags); });
}
int FaultInjectingOs::Fstat(int fd, struct stat* st) {
  return Run<int>("Fstat", nullptr, [&] { return inner_.Fstat(fd, st); });
}
int FaultInjectingOs::Fstatvfs(int fd, struct statvfs* st) {
  return Run<int>("Fstatvfs", nullptr, [&] { return inner_.Fstatvfs(fd, st); });
}
int FaultInjectingOs::Fsync(int fd) {
  return Run<int>("Fsync", nullptr, [&] { return sync_noop_ ? 0 : inner_.Fsync(fd); });
}
int FaultInjectingOs::Syncfs(int fd) {
  return Run<int>("Syncfs", nullptr, [&] { return sync_noop_ ? 0 : inner_.Syncfs(fd); });
}
int FaultInjectingOs::SyncFileRange(int fd, off_t offset, off_t nbytes, unsigned int flags) {
  return Run<int>("SyncFileRange", nullptr, [&] {
    return sync_noop_ ? 0 : inner_.SyncFileRange(fd, offset, nbytes, flags);
  });
}
ssize_t FaultInjectingOs::CopyFileRange(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                                        size_t len, unsigned int flags) {
  return Run<ssize_t>("CopyFileRange", nullptr, [&] {
    return inner_.CopyFileRange(fd_in, off_in, fd_out, off_out, len, flags);
  });
}
ssize_t FaultInjectingOs::Read(int fd, void* buf, size_t count) {
  return Run<ssize_t>("Read", nullptr, [&] { return inner_.Read(fd, buf, count); });
}
ssize_t FaultInjectingOs::Pread(int fd, void* buf, size_t count, off_t offset) {
  return Run<ssize_t>("Pread", nullptr, [&] { return inner_.Pread(fd, buf, count, offset); });
}
ssize_t FaultInjectingOs::Write(int fd, const void* buf, size_t count) {
  return Run<ssize_t>("Write", nullptr, [&] { return inner_.Write(fd, buf, count); });
}
int FaultInjectingOs::Fchmod(int fd, mode_t mode) {
  return Run<int>("Fchmod", nullptr, [&] { return inner_.Fchmod(fd, mode); });
}
int FaultInjectingOs::Futimens(int fd, const struct timespec times[2]) {
  return Run<int>("Futimens", nullptr, [&] { return inner_.Futimens(fd, times); });
}
int FaultInjectingOs::UtimensAt(int dirfd, const char* path, const struct timespec times[2],
                                int flags) {
  return Run<int>("UtimensAt", path, [&] { return inner_.UtimensAt(dirfd, path, times, flags); });
}
int FaultInjectingOs::Flock(int fd, int operation) {
  return Run<int>("Flock", nullptr, [&] { return inner_.Flock(fd, operation); });
}
int FaultInjectingOs::ReadDir(int dirfd, std::vector<DirEntry>* out) {
  return Run<int>("ReadDir", nullptr, [&] { return inner_.ReadDir(dirfd, out); });
}

}  // namespace despool::workers
