#include "despool/workers/allocator.h"

#include <malloc.h>

namespace despool::workers {

void RetainFreedMemoryForReuse() {
  // Fixed values also switch off glibc's dynamic threshold, which otherwise only rises after a
  // large block has been freed once (so the first refresh of each size paid for it).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

}  // namespace despool::workers
