// Clean shutdown without signal handlers or global state.
#pragma once

namespace despool {

// Blocks SIGTERM and SIGINT in the calling thread — and so in every thread created after it
// (thread pools, ZeroMQ's I/O threads inherit the mask), so call it first in main() — and
// returns a non-blocking signalfd that becomes readable when one arrives, for the event loop
// to poll. -1 on failure (errno set).
int BlockStopSignals();

}  // namespace despool
