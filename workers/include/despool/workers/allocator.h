// Process-wide allocator settings for processes that run refreshes (despool-worker, benches).
#pragma once

#include "despool/common/result.h"

namespace despool::workers {

// Keeps the memory one refresh frees for the next one to reuse.
//
// Why: a refresh of a 10,000-file package builds several MB of short-lived tables (the scanned
// source, the live walk's map, manifests). With glibc's defaults the large ones are mmapped and
// unmapped, and the heap's top is trimmed, so each refresh page-faults them in afresh; measured
// with engine_bench, that was 10-13 ms of the first ~90 ms incremental refresh after an install
// (its scan phase: 30 ms, 17 ms with these settings). Allocations up to 32 MiB (glibc's maximum
// mmap threshold) come from the heap, and up to 256 MiB of free heap top is kept, so a worker's
// footprint stays near its largest refresh so far. Call once, early in main. An error says which
// setting glibc refused (the process then runs with its defaults for that one).
Status RetainFreedMemoryForReuse();

}  // namespace despool::workers
