// Checkpoints a WAL-mode SQLite database on its own thread and its own connection, so the commit
// path never copies WAL frames into the database file nor waits for that file's fsync. SQLite's
// automatic checkpoint ran inside the commit that crossed wal_autocheckpoint: every ~1000 pages
// one transaction (and every ack and dispatch waiting on it) paid a whole checkpoint.
//
// Contract: the writer calls Notify(frames) after each commit (from its sqlite3_wal_hook); it
// never blocks. Once the WAL holds `threshold_pages` frames, the checkpointer runs PASSIVE
// checkpoints (they never wait for, nor block, the writer or readers), one each time the WAL grew
// by a quarter of the threshold, each followed by up to 3 short catch-up passes. The WAL starts
// over at the writer's next commit when a pass ends between two of its transactions with every
// frame in the database; a writer
// that keeps committing rarely leaves that moment, so it bounds the WAL itself (see
// SqliteStore::AfterCommit), holding this thread off meanwhile. Started lazily by the writer.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "despool/common/result.h"

struct sqlite3;

namespace despool::broker {

class WalCheckpointer {
 public:
  struct Stats {
    std::uint64_t checkpoints = 0;  // PASSIVE checkpoint passes
    std::uint64_t ns = 0;           // wall clock spent in them
  };

  // Opens its own connection to `path` (same synchronous mode as the writer: FULL/NORMAL both
  // fsync the database file after a checkpoint) and starts the thread.
  static Result<std::unique_ptr<WalCheckpointer>> Start(const std::string& path, int threshold_pages,
                                                        bool sync_full);
  ~WalCheckpointer();
  WalCheckpointer(const WalCheckpointer&) = delete;
  WalCheckpointer& operator=(const WalCheckpointer&) = delete;

  // The WAL holds `frames` frames after a commit.
  void Notify(int frames);
  Stats stats() const;

  // While alive, no pass runs (it waited for the running one to end): the writer checkpoints
  // itself meanwhile (a pass holds SQLite's checkpoint lock, which has no busy wait).
  class Hold {
   public:
    // wait=false: held() is false when a pass is under way (nothing is held then).
    explicit Hold(WalCheckpointer& c, bool wait = true);
    ~Hold();
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    bool held() const { return held_; }

   private:
    WalCheckpointer& c_;
    bool held_ = false;
  };

 private:
  WalCheckpointer(sqlite3* db, int db_fd, int threshold_pages);
  void Loop();

  sqlite3* db_;
  const int db_fd_;  // the database file, read-only, to fsync it (-1: could not open)
  const int threshold_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool wanted_ = false;
  int last_pass_frames_ = 0;  // the WAL's size when the last pass ran
  int latest_frames_ = 0;     // the WAL's size after the writer's latest commit
  bool running_ = false;  // a pass is under way
  bool held_ = false;     // a Hold is alive
  bool stop_ = false;
  Stats stats_;
  std::thread thread_;
};

}  // namespace despool::broker
