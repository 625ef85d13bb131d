// Reads the store rows of parked jobs shortly before they come due, on its own thread and
// connection, and throws them away: the point is the OS page cache. The loop reloads a parked
// job from the store when it comes due; with a million rows and a cold cache (memory pressure,
// another process dropping caches) that read waits on the disk for 10-25 ms on the loop thread,
// and every due retry behind it is late by as much. Read here first, it is a memory copy then.
//
// Contract: Warm never blocks (ids beyond kMaxQueued are dropped: warming is only a hint);
// nothing read here is used for any decision.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "despool/broker/store.h"
#include "despool/common/result.h"

namespace despool::broker {

class RowWarmer {
 public:
  // Opens its own connection to the store at `path` and starts the thread.
  static Result<std::unique_ptr<RowWarmer>> Start(const std::string& path, const SqliteOptions& opts);
  ~RowWarmer();
  RowWarmer(const RowWarmer&) = delete;
  RowWarmer& operator=(const RowWarmer&) = delete;

  explicit RowWarmer(std::unique_ptr<Store> store);

  void Warm(std::vector<std::string> job_ids);

 private:
  void Run();

  static constexpr std::size_t kMaxQueued = 100'000;
  std::unique_ptr<Store> store_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace despool::broker
