// Waiting on a ZeroMQ socket against a deadline (despoolctl's client, the test harnesses).
// Header-only over cppzmq: users link cppzmq themselves.
#pragma once

#include <cerrno>
#include <chrono>
#include <vector>
#include <zmq.hpp>

namespace despool {

// True once `socket` has a message to read; false when `deadline` passes first. EINTR retries.
// zmq_poll reads any negative timeout as "wait forever", so the timeout is recomputed from the
// deadline on every pass and never goes below zero: a caller descheduled past its deadline
// between the check and the poll must not block for good on a peer that never answers (a CURVE
// refusal sends nothing at all).
inline bool WaitReadable(zmq::socket_t& socket, std::chrono::steady_clock::time_point deadline) {
  using std::chrono::milliseconds;
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    const milliseconds left = deadline > now ? std::chrono::ceil<milliseconds>(deadline - now) : milliseconds(0);
    std::vector<zmq_pollitem_t> items{{socket.handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, left);
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      throw;
    }
    if (items[0].revents & ZMQ_POLLIN) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
  }
}

}  // namespace despool
