// Two device functions that CUB 3.0 (the CCCL of CUDA 13) removed and official VMamba's
// selective-scan sources still call: cub::CTA_SYNC() and cub::LaneId(). Without them nvcc 13
// stops with 'namespace "cub" has no member "LaneId"' in the official reverse_scan.cuh.
//
// build_official_kernels.py force-includes this file into each .cu file of that build
// (NVCC_APPEND_FLAGS="-include <this file>"), so the official checkout compiles unedited. Under
// an older CUB, which still has both, this file defines nothing.
#pragma once

#include <cub/version.cuh>

#if CUB_VERSION >= 300000
namespace cub {

// A barrier for every thread of the block: what CUB's CTA_SYNC wrapped.
__device__ __forceinline__ void CTA_SYNC() { __syncthreads(); }

// The calling thread's lane in its warp, from the %laneid special register.
__device__ __forceinline__ unsigned int LaneId() {
    unsigned int lane;
    asm("mov.u32 %0, %%laneid;" : "=r"(lane));
    return lane;
}

}  // namespace cub
#endif
