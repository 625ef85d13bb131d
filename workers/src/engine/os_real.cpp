// The real Os: direct syscalls.
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "despool/workers/os.h"

namespace despool::workers {
namespace {

class RealOsImpl final : public Os {
 public:
  int OpenAt(int dirfd, const char* path, int flags, mode_t mode) override {
    return ::openat(dirfd, path, flags | O_CLOEXEC, mode);
  }
  int Close(int fd) override { return ::close(fd); }
  int MkdirAt(int dirfd, const char* path, mode_t mode) override {
    return ::mkdirat(dirfd, path, mode);
  }
  int RenameAt2(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                unsigned int flags) override {
    return ::renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
  }
  int LinkAt(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
             int flags) override {
    return ::linkat(olddirfd, oldpath, newdirfd, newpath, flags);
  }
  int UnlinkAt(int dirfd, const char* path, int flags) override {
    return ::unlinkat(dirfd, path, flags);
  }
  int SymlinkAt(const char* target, int newdirfd, const char* linkpath) override {
    return ::symlinkat(target, newdirfd, linkpath);
  }
  ssize_t ReadlinkAt(int dirfd, const char* path, char* buf, size_t size) override {
    return ::readlinkat(dirfd, path, buf, size);
  }
  int FstatAt(int dirfd, const char* path, struct stat* st, int flags) override {
    return ::fstatat(dirfd, path, st, flags);
  }
  int Fstat(int fd, struct stat* st) override { return ::fstat(fd, st); }
  int Fstatvfs(int fd, struct statvfs* st) override { return ::fstatvfs(fd, st); }
  int Fsync(int fd) override { return ::fsync(fd); }
  int Syncfs(int fd) override { return ::syncfs(fd); }
  int SyncFileRange(int fd, off_t offset, off_t nbytes, unsigned int flags) override {
    return ::sync_file_range(fd, offset, nbytes, flags);
  }
  ssize_t CopyFileRange(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t len,
                        unsigned int flags) override {
    return ::copy_file_range(fd_in, off_in, fd_out, off_out, len, flags);
  }
  ssize_t Read(int fd, void* buf, size_t count) override { return ::read(fd, buf, count); }
  ssize_t Pread(int fd, void* buf, size_t count, off_t offset) override {
    return ::pread(fd, buf, count, offset);
  }
  ssize_t Write(int fd, const void* buf, size_t count) override {
    return ::write(fd, buf, count);
  }
  int Fchmod(int fd, mode_t mode) override { return ::fchmod(fd, mode); }
  int Futimens(int fd, const struct timespec times[2]) override { return ::futimens(fd, times); }
  int UtimensAt(int dirfd, const char* path, const struct timespec times[2], int flags) override {
    return ::utimensat(dirfd, path, times, flags);
  }
  int Flock(int fd, int operation) override { return ::flock(fd, operation); }
  int ReadDir(int dirfd, std::vector<DirEntry>* out) override {
    out->clear();
    int dup_fd = ::fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) return -1;
    DIR* dir = ::fdopendir(dup_fd);
    if (dir == nullptr) {
      int err = errno;
      ::close(dup_fd);
      errno = err;
      return -1;
    }
    ::rewinddir(dir);  // the dup shares the offset with dirfd
    for (;;) {
      errno = 0;
      struct dirent* e = ::readdir(dir);
      if (e == nullptr) {
        int err = errno;
        ::closedir(dir);
        if (err != 0) {
          errno = err;
          return -1;
        }
        return 0;
      }
      if (e->d_name[0] == '.' &&
          (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0'))) {
        continue;
      }
      out->push_back(DirEntry{e->d_name, e->d_type, e->d_ino});
    }
  }
};

}  // namespace

Os& RealOs() {
  static RealOsImpl os;
  return os;
}

}  // namespace despool::workers
