// Launch geometry of the mask ops' grid-stride CUDA kernels (CUDA builds only: included by .cu files alone).
#pragma once

#include <cstdint>

namespace wtext {

// Threads per block of the mask kernels.
constexpr int kMaskThreads = 256;

// Blocks of kMaskThreads for a grid-stride loop over n items on the current device: enough to fill the GPU several
// times over, never more than the items need (at least one).
int grid_size(int64_t n);

}  // namespace wtext
