#include "despool/broker/commit_thread.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

#include "ack_path.h"

namespace despool::broker {
namespace {

std::int64_t ThreadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace

CommitThread::CommitThread(Store& store) : store_(store) {
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ >= 0) thread_ = std::thread([this] { Loop(); });
}

CommitThread::~CommitThread() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (event_fd_ >= 0) ::close(event_fd_);
}

void CommitThread::Submit(const WriteBatch* batch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = batch;
    done_ = false;
  }
  cv_.notify_all();
}

Status CommitThread::TakeResult() {
  pollfd p{event_fd_, POLLIN, 0};
  while (true) {
    std::uint64_t n = 0;
    if (::read(event_fd_, &n, sizeof n) == sizeof n) break;
    if (errno != EAGAIN && errno != EINTR) return SysError("read eventfd", errno);
    ::poll(&p, 1, -1);
  }
  std::lock_guard<std::mutex> lock(mu_);
  return result_;
}

std::uint64_t CommitThread::commit_ns() const {
  std::lock_guard<std::mutex> lock(mu_);
  return commit_ns_;
}

std::uint64_t CommitThread::commit_cpu_ns() const {
  std::lock_guard<std::mutex> lock(mu_);
  return commit_cpu_ns_;
}

void CommitThread::Loop() {
  // Named so `top -H` and perf tell it from the event loop.
  pthread_setname_np(pthread_self(), "broker-commit");
  MarkAckPathThread("commit");
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || (job_ != nullptr && !done_); });
    if (job_ == nullptr || done_) return;  // stop requested with nothing to do
    const WriteBatch* batch = job_;
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t c0 = ThreadCpuNs();
    Status st = store_.Commit(*batch);
    const std::int64_t c1 = ThreadCpuNs();
    const auto t1 = std::chrono::steady_clock::now();
    lock.lock();
    result_ = std::move(st);
    commit_ns_ += static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count());
    commit_cpu_ns_ += static_cast<std::uint64_t>(c1 - c0);
    job_ = nullptr;
    done_ = true;
    const std::uint64_t one = 1;
    if (::write(event_fd_, &one, sizeof one) != sizeof one) {
      // An eventfd write only fails on counter overflow; nothing sensible to do but keep going.
    }
  }
}

}  // namespace despool::broker
