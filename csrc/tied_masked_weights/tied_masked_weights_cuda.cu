// CUDA element loops of the mask ops: one thread per weight element, looping over the layers of a chunk, so the
// weight is read once and every mask is regenerated from its hash instead of being stored. Each kernel walks the
// tensor it writes in memory order (coalesced stores) and maps to the other side's index (see stored_offset).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "mask/cuda_grid.h"
#include "tied_masked_weights/tied_masked_weights.h"

namespace wtext {

namespace {

template <MaskPattern P, typename in_t, typename out_t>
__global__ void forward_kernel(const TiedMaskParams params, const in_t* __restrict__ weight, out_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < params.numel; s += stride) {
    const int64_t i = logical_index(params, s);
    const out_t value = weight ? static_cast<out_t>(weight[params.weight_stored_alike ? s : i]) : out_t(1);
    for (int j = 0; j < params.num_layers; ++j) {
      const bool kept = keep<P>(params.layers[j], static_cast<uint64_t>(i), params.reduction, params.nm_n, params.nm_m);
      out[j * params.numel + s] = kept ? value : out_t(0);
    }
  }
}

template <MaskPattern P, typename grad_t, typename weight_t>
__global__ void backward_kernel(const TiedMaskParams params, const grad_t* __restrict__ grad,
                                weight_t* __restrict__ grad_weight, bool accumulate) {
  using acc_t = at::opmath_type<grad_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < params.numel; i += stride) {
    acc_t sum = accumulate ? static_cast<acc_t>(grad_weight[i]) : acc_t(0);
    const int64_t at = stored_offset(params, i);
    for (int j = 0; j < params.num_layers; ++j) {
      if (keep<P>(params.layers[j], static_cast<uint64_t>(i), params.reduction, params.nm_n, params.nm_m)) {
        sum += static_cast<acc_t>(grad[j * params.numel + at]);
      }
    }
    grad_weight[i] = static_cast<weight_t>(sum);
  }
}

void forward_cuda(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& weight, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::ScalarType in_type = weight.defined() ? weight.scalar_type() : out.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_type, "tied_masked_weights_cuda", [&] {
    using in_t = scalar_t;
    const in_t* weight_ptr = weight.defined() ? weight.const_data_ptr<in_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "tied_masked_weights_cuda_out", [&] {
      using out_t = scalar_t;
      dispatch_pattern(pattern, [&](auto p) {
        forward_kernel<decltype(p)::value, in_t, out_t><<<grid_size(params.numel), kMaskThreads, 0, stream>>>(
            params, weight_ptr, out.mutable_data_ptr<out_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

void backward_cuda(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& grad,
                   const at::Tensor& grad_weight, bool accumulate) {
  const c10::cuda::CUDAGuard guard(grad_weight.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "tied_masked_weights_backward_cuda", [&] {
    using grad_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_weight.scalar_type(), "tied_masked_weights_backward_cuda_w", [&] {
      using weight_t = scalar_t;
      dispatch_pattern(pattern, [&](auto p) {
        backward_kernel<decltype(p)::value, grad_t, weight_t><<<grid_size(params.numel), kMaskThreads, 0, stream>>>(
            params, grad.const_data_ptr<grad_t>(), grad_weight.mutable_data_ptr<weight_t>(), accumulate);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

constexpr TiedMaskKernels kCudaKernels{&forward_cuda, &backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CUDA, m) { register_tied_mask_ops<kCudaKernels>(m, c10::DeviceType::CUDA); }

}  // namespace wtext
