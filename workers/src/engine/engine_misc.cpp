// Small pieces of the engine API: cancellation, the token-bucket limiter, names.
#include <algorithm>

#include "despool/workers/engine.h"

namespace despool::workers {

void CancelToken::Cancel() const {
  {
    std::lock_guard lock(mu_);
    cancelled_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
}

bool CancelToken::WaitFor(std::chrono::nanoseconds d) const {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, d, [&] { return cancelled_.load(std::memory_order_acquire); });
}

namespace {

class TokenBucket final : public RateLimiter {
 public:
  explicit TokenBucket(std::uint64_t rate)
      : rate_(static_cast<double>(std::max<std::uint64_t>(rate, 1))),
        burst_(std::max(rate_ / 10.0, 1024.0 * 1024.0)),
        tokens_(burst_),
        last_(std::chrono::steady_clock::now()) {}

  std::chrono::nanoseconds Reserve(std::uint64_t bytes) override {
    std::lock_guard lock(mu_);
    auto now = std::chrono::steady_clock::now();
    tokens_ = std::min(burst_, tokens_ + rate_ * std::chrono::duration<double>(now - last_).count());
    last_ = now;
    tokens_ -= static_cast<double>(bytes);  // may go negative: the debt is the wait
    if (tokens_ >= 0) return std::chrono::nanoseconds(0);
    return std::chrono::nanoseconds(static_cast<std::int64_t>(-tokens_ / rate_ * 1e9));
  }

 private:
  std::mutex mu_;
  double rate_, burst_, tokens_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace

std::shared_ptr<RateLimiter> MakeTokenBucket(std::uint64_t bytes_per_second) {
  return std::make_shared<TokenBucket>(bytes_per_second);
}

const char* PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kScan: return "scan";
    case Phase::kStage: return "stage";
    case Phase::kSync: return "sync";
    case Phase::kInUseCheck: return "in-use-check";
    case Phase::kSwitch: return "switch";
    case Phase::kRetire: return "retire";
    case Phase::kDone: return "done";
  }
  return "unknown";
}

const char* OutcomeKindName(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kApplied: return "applied";
    case OutcomeKind::kUpToDate: return "up-to-date";
    case OutcomeKind::kDeferred: return "deferred";
    case OutcomeKind::kRetryableError: return "retryable-error";
    case OutcomeKind::kPermanentError: return "permanent-error";
    case OutcomeKind::kCancelled: return "cancelled";
  }
  return "unknown";
}

}  // namespace despool::workers
