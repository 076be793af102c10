// The grid size of the mask kernels, from the current device's multiprocessor count.
#include "mask/cuda_grid.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include <algorithm>
#include <array>
#include <atomic>

namespace wtext {

namespace {

int multiprocessor_count() {
  // Read once per device: a driver query on every launch adds host time to ops that run once per tied application.
  // (ATen/cuda/CUDAContext.h would give the SM count too, but it pulls in cuSPARSE/cuBLAS headers that a bare
  // CUDA toolkit need not have.)
  constexpr int kMaxDevices = 64;
  static std::array<std::atomic<int>, kMaxDevices> counts{};
  const int device = c10::cuda::current_device();
  const auto query = [device] {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    return count;
  };
  if (device >= kMaxDevices) return query();  // beyond the cache: asked each time, still correct
  int count = counts[device].load(std::memory_order_relaxed);
  if (count == 0) {
    count = query();
    counts[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

}  // namespace

int grid_size(int64_t n) {
  // The grid-stride loops cover what 32 blocks per multiprocessor do not.
  const int64_t max_blocks = static_cast<int64_t>(multiprocessor_count()) * 32;
  const int64_t needed = (n + kMaskThreads - 1) / kMaskThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, max_blocks)));
}

}  // namespace wtext
