#include "despool/workers/allocator.h"

#include <malloc.h>

namespace despool::workers {

Status RetainFreedMemoryForReuse() {
  // Fixed values also switch off glibc's dynamic threshold, which otherwise only rises after a
  // large block has been freed once (so the first refresh of each size paid for it).
  if (mallopt(M_MMAP_THRESHOLD, 32 << 20) != 1) {
    return MakeError(ErrorCode::kInternal, "mallopt(M_MMAP_THRESHOLD, 32 MiB) refused");
  }
  if (mallopt(M_TRIM_THRESHOLD, 256 << 20) != 1) {
    return MakeError(ErrorCode::kInternal, "mallopt(M_TRIM_THRESHOLD, 256 MiB) refused");
  }
  return Status::Ok();
}

}  // namespace despool::workers
