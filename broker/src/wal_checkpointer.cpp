#include "wal_checkpointer.h"

#include <pthread.h>
#include <sqlite3.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "despool/common/logging.h"

namespace despool::broker {
namespace {

constexpr int kNice = 10;
constexpr int kCatchUpPasses = 3;

}  // namespace

Result<std::unique_ptr<WalCheckpointer>> WalCheckpointer::Start(const std::string& path, int threshold_pages,
                                                                bool sync_full) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr) != SQLITE_OK) {
    std::string m = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return MakeError(ErrorCode::kIo, "open checkpoint connection " + path + ": " + m);
  }
  // Never checkpoints on its own (it never writes anyway), syncs like the writer.
  const char* setup = sync_full ? "PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0"
                                : "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0";
  if (sqlite3_exec(db, setup, nullptr, nullptr, nullptr) != SQLITE_OK) {
    std::string m = sqlite3_errmsg(db);
    sqlite3_close(db);
    return MakeError(ErrorCode::kIo, "set up checkpoint connection: " + m);
  }
  // For the fsyncs SQLite skips (see Loop); without it those pages wait for the next full pass.
  const int db_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  return std::unique_ptr<WalCheckpointer>(new WalCheckpointer(db, db_fd, threshold_pages));
}

WalCheckpointer::WalCheckpointer(sqlite3* db, int db_fd, int threshold_pages)
    : db_(db), db_fd_(db_fd), threshold_(threshold_pages), thread_([this] { Loop(); }) {}

WalCheckpointer::~WalCheckpointer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  sqlite3_close(db_);
  if (db_fd_ >= 0) ::close(db_fd_);
}

void WalCheckpointer::Notify(int frames) {
  if (frames < threshold_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    latest_frames_ = frames;
    if (frames < last_pass_frames_) last_pass_frames_ = 0;  // the WAL started over since
    // A pass per commit would fsync the database as often as the commits fsync the WAL, for a
    // few pages each time: wait until a quarter of the threshold is new since the last pass.
    if (wanted_ || frames - last_pass_frames_ < std::max(1, threshold_ / 4)) return;
    wanted_ = true;
  }
  cv_.notify_one();
}

WalCheckpointer::Hold::Hold(WalCheckpointer& c, bool wait) : c_(c) {
  std::unique_lock<std::mutex> lock(c_.mu_);
  if (!wait && c_.running_) return;
  c_.held_ = true;
  held_ = true;
  c_.cv_.wait(lock, [this] { return !c_.running_; });
}

WalCheckpointer::Hold::~Hold() {
  if (!held_) return;
  {
    std::lock_guard<std::mutex> lock(c_.mu_);
    c_.held_ = false;
  }
  c_.cv_.notify_all();
}

WalCheckpointer::Stats WalCheckpointer::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void WalCheckpointer::Loop() {
  pthread_setname_np(pthread_self(), "broker-ckpt");
  // Background work: on a busy machine the loop and the commit thread (every ack waits for
  // them) go first. Lowering a thread's own priority needs no privilege; failing is harmless.
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kNice) != 0) {
    GetLogger("store")->debug("cannot lower the checkpoint thread's priority");
  }
  auto log = GetLogger("store");
  std::unique_lock<std::mutex> lock(mu_);
  int catch_up = 0;  // passes in a row chasing the frames committed during the previous one
  while (true) {
    cv_.wait(lock, [this] { return stop_ || (wanted_ && !held_); });
    if (stop_) return;
    wanted_ = false;
    running_ = true;
    lock.unlock();
    // One pass copies what the WAL held when it began; what commits appended meanwhile is left
    // for a short catch-up pass right after, which with luck ends between two commits with
    // every frame in the database: the writer then starts the WAL over.
    int log_frames = 0, backfilled = 0;
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log_frames, &backfilled);
    const auto ns = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) log->warn("wal checkpoint failed error={}", LogQuote(sqlite3_errmsg(db_)));
    // SQLite fsyncs the database file only after a pass that found nothing committed meanwhile.
    // Under steady commits most passes are not such a pass, and the pages they copied would pile
    // up unsynced until one is, or until the writer checkpoints itself: then one long fsync
    // (10+ ms measured), on the ack path in the writer's case. Flush them here, in the
    // background, so the final sync only has the last pass's pages to write.
    if (rc == SQLITE_OK && backfilled > 0 && db_fd_ >= 0 && ::fdatasync(db_fd_) != 0) {
      log->warn("fdatasync of the database failed error={}", LogQuote(std::strerror(errno)));
    }
    lock.lock();
    running_ = false;
    if (rc == SQLITE_OK && log_frames > 0) last_pass_frames_ = log_frames;
    const bool complete = rc == SQLITE_OK && log_frames > 0 && backfilled >= log_frames;
    if (complete && latest_frames_ > log_frames && catch_up < kCatchUpPasses) {
      ++catch_up;
      wanted_ = true;
    } else {
      catch_up = 0;
    }
    cv_.notify_all();  // a Hold may be waiting
    stats_.checkpoints += 1;
    stats_.ns += ns;
  }
}

}  // namespace despool::broker
