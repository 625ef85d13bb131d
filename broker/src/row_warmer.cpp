#include "row_warmer.h"

#include <pthread.h>

namespace despool::broker {

Result<std::unique_ptr<RowWarmer>> RowWarmer::Start(const std::string& path, const SqliteOptions& opts) {
  // Its own page cache is of no use (the point is the OS cache the loop's connection reads
  // through): keep it small rather than another 32 MiB of RSS.
  SqliteOptions own = opts;
  own.cache_kib = 1024;
  auto store = OpenSqliteStore(path, own);
  if (!store.ok()) return store.take_error();
  return std::make_unique<RowWarmer>(std::move(store).value());
}

RowWarmer::RowWarmer(std::unique_ptr<Store> store) : store_(std::move(store)) {
  thread_ = std::thread([this] { Run(); });
}

RowWarmer::~RowWarmer() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();  // (a batch under way stops at its next row)
  thread_.join();
}

void RowWarmer::Warm(std::vector<std::string> job_ids) {
  {
    std::lock_guard lock(mu_);
    for (auto& id : job_ids) {
      if (queue_.size() >= kMaxQueued) break;
      queue_.push_back(std::move(id));
    }
  }
  cv_.notify_one();
}

void RowWarmer::Run() {
  pthread_setname_np(pthread_self(), "broker-warm");
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    std::deque<std::string> batch;
    batch.swap(queue_);
    lock.unlock();
    for (const auto& id : batch) {
      if (stop_) return;
      (void)store_->GetJob(id);
    }
    lock.lock();
  }
}

}  // namespace despool::broker
