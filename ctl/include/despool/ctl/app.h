// despoolctl: the command-line front end (CONTRACT.md). main.cpp only calls RunDespoolctl.
#pragma once

#include <ostream>

namespace despool::ctl {

// Exit codes: despool::kExitOk... in common/cli.h (2, 1, 3, 4 in that order of precedence).

struct Io {
  std::ostream& out;
  std::ostream& err;
  bool out_is_tty = false;  // watch draws progress bars only on a terminal
  int out_fd = -1;          // for the terminal width (TIOCGWINSZ), -1 = 80 columns
};

int RunDespoolctl(int argc, const char* const* argv, Io io);

}  // namespace despool::ctl
