// The terminal view of `despoolctl watch`: one progress bar per running job (files, bytes,
// rate) kept at the bottom of the screen, with state changes printed above it as permanent
// lines. Redraws by moving the cursor up over the previous bars (ANSI), so every bar line is
// cut to the terminal width: a wrapped line would break the arithmetic.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <ostream>
#include <string>

#include "despool/messages/types.h"

namespace despool::ctl {

class ProgressView {
 public:
  ProgressView(std::ostream& out, int columns) : out_(out), columns_(columns < 20 ? 80 : columns) {}
  // Prints state changes as lines, updates bars and redraws.
  void OnEvent(const msg::Event& event, std::int64_t now_ms);
  // Removes the bars from the screen (before exiting).
  void Clear();

  // One bar line (exposed for tests).
  static std::string BarLine(const msg::JobInfo& job, const msg::Progress& p, double bytes_per_s, int columns);

 private:
  struct Bar {
    msg::JobInfo job;
    msg::Progress progress;
    bool has_progress = false;
    std::chrono::steady_clock::time_point first_seen;
    std::uint64_t first_bytes = 0;
  };
  void Erase();
  void Draw(std::int64_t now_ms);

  std::ostream& out_;
  int columns_;
  std::map<std::string, Bar> bars_;  // by job id
  int drawn_lines_ = 0;
};

}  // namespace despool::ctl
