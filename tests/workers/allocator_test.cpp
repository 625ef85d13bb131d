// RetainFreedMemoryForReuse: a freed multi-MB table stays in the heap for the next refresh
// instead of being unmapped (each test runs in its own process under ctest; the setting is
// process-wide).
#include "despool/workers/allocator.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>

namespace despool::workers {
namespace {

// Allocates and touches `bytes`, frees it, and returns how much of the heap is free afterwards
// and how much is mmapped while it is held.
struct Footprint {
  std::size_t mmapped_while_held = 0;
  std::size_t heap_free_after = 0;
};

Footprint AllocateTouchFree(std::size_t bytes) {
  Footprint f;
  void* block = std::malloc(bytes);
  EXPECT_NE(block, nullptr);
  std::memset(block, 1, bytes);
  asm volatile("" : : "r"(block) : "memory");  // the block is used: no elided malloc/free pair
  f.mmapped_while_held = mallinfo2().hblkhd;
  std::free(block);
  f.heap_free_after = mallinfo2().fordblks;
  return f;
}

TEST(RetainFreedMemory, AFreedEightMegabyteTableStaysInTheHeap) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer's allocator replaces glibc's: mallopt and mallinfo2 do not apply";
#endif
  constexpr std::size_t kTable = 8u << 20;
  // glibc's initial settings (set explicitly: its dynamic threshold may have risen already if
  // this process freed a large block earlier): an 8 MiB block is mmapped and given back to the
  // kernel when freed.
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
  mallopt(M_TRIM_THRESHOLD, 128 << 10);
  const Footprint before = AllocateTouchFree(kTable);
  EXPECT_GE(before.mmapped_while_held, kTable);
  EXPECT_LT(before.heap_free_after, kTable);
  RetainFreedMemoryForReuse();
  // Now it comes from the heap and stays there, free for the next table.
  const Footprint after = AllocateTouchFree(kTable);
  EXPECT_LT(after.mmapped_while_held, kTable);
  EXPECT_GE(after.heap_free_after, kTable);
}

}  // namespace
}  // namespace despool::workers
