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

// Allocates and touches `bytes`; how much more was mmapped while it was held, and how much of
// the heap is free once it is freed.
struct Footprint {
  std::size_t mmapped_while_held = 0;
  std::size_t heap_free_after = 0;
};

Footprint AllocateTouchFree(std::size_t bytes) {
  Footprint f;
  const std::size_t mmapped_before = mallinfo2().hblkhd;
  void* block = std::malloc(bytes);
  EXPECT_NE(block, nullptr);
  std::memset(block, 1, bytes);
  asm volatile("" : : "r"(block) : "memory");  // the block is used: no elided malloc/free pair
  const std::size_t mmapped_held = mallinfo2().hblkhd;
  f.mmapped_while_held = mmapped_held > mmapped_before ? mmapped_held - mmapped_before : 0;
  std::free(block);
  f.heap_free_after = mallinfo2().fordblks;
  return f;
}

TEST(RetainFreedMemory, AnEightMegabyteTableComesFromTheHeapAndStaysThere) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer's allocator replaces glibc's: mallopt and mallinfo2 do not apply";
#endif
  constexpr std::size_t kTable = 8u << 20;
  // glibc's initial thresholds, set explicitly (the dynamic one rises once this process has
  // freed a large block), and the heap trimmed: an 8 MiB block is mmapped, and so given back
  // when freed.
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
  mallopt(M_TRIM_THRESHOLD, 128 << 10);
  malloc_trim(0);  // and no free heap left over from earlier work to serve it from
  EXPECT_GE(AllocateTouchFree(kTable).mmapped_while_held, kTable);
  ASSERT_TRUE(RetainFreedMemoryForReuse().ok());
  // Now it comes from the heap, and once freed the heap keeps at least that much free for the
  // next table (whatever this process did before).
  const Footprint after = AllocateTouchFree(kTable);
  EXPECT_LT(after.mmapped_while_held, kTable);
  EXPECT_GE(after.heap_free_after, kTable);
}

}  // namespace
}  // namespace despool::workers
