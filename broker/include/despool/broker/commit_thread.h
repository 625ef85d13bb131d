// Commits WriteBatches on a dedicated thread, so the event loop keeps reading and processing
// the next round while a transaction is being fsynced (pipelined group commit).
//
// Contract: one batch in flight at a time. Submit hands over a pointer the caller keeps alive and
// unchanged until notify_fd() becomes readable and TakeResult() returned; TakeResult gives that
// commit's Status. The Store is used only by this thread while it runs.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "despool/broker/store.h"
#include "despool/common/result.h"

namespace despool::broker {

class CommitThread {
 public:
  explicit CommitThread(Store& store);
  ~CommitThread();
  CommitThread(const CommitThread&) = delete;
  CommitThread& operator=(const CommitThread&) = delete;

  bool ok() const { return event_fd_ >= 0; }
  void Submit(const WriteBatch* batch);
  int notify_fd() const { return event_fd_; }
  // Blocks until the submitted commit finished (poll notify_fd() first to avoid blocking).
  Status TakeResult();

  // Totals over finished commits (wall clock and this thread's CPU time).
  std::uint64_t commit_ns() const;
  std::uint64_t commit_cpu_ns() const;

 private:
  void Loop();

  Store& store_;
  int event_fd_ = -1;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  const WriteBatch* job_ = nullptr;
  bool done_ = false;
  bool stop_ = false;
  Status result_;
  std::uint64_t commit_ns_ = 0;
  std::uint64_t commit_cpu_ns_ = 0;
  std::thread thread_;
};

}  // namespace despool::broker
