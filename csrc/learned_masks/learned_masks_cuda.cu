// CUDA element loops of the learned and packed mask ops: one thread per weight element, looping over all L
// applications in one launch, so the weight is read once and the masks are read on the fly from the scores and
// thresholds or from the packed bits (never expanded into a mask tensor). The forward walks the views in memory
// order (coalesced stores) and maps to the logical index; the backward walks the logical index, where the scores and
// their gradient are row-major, and maps to the stored offset of the gradient (see stored_offset).
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "learned_masks/learned_masks.h"
#include "mask/cuda_grid.h"
#include "mask/mask_plan.h"

namespace wtext {

namespace {

template <typename Source, typename in_t, typename out_t>
__global__ void forward_kernel(const LearnedMaskParams params, const Source source, const in_t* __restrict__ weight,
                               out_t* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < params.numel; s += stride) {
    const int64_t i = logical_index(params, s);
    const out_t value = static_cast<out_t>(weight[params.weight_stored_alike ? s : i]);
    for (int64_t layer = 0; layer < params.num_layers; ++layer) {
      // A select, not a product: a dropped inf or NaN weight gives +0.
      out[layer * params.numel + s] = source.keep(params, layer, i) ? value : out_t(0);
    }
  }
}

// Either output may be absent (nullptr); the test is the same for every thread, so it does not diverge.
template <typename Source, typename grad_t, typename weight_t>
__global__ void backward_kernel(const LearnedMaskParams params, const Source source, const grad_t* __restrict__ grad,
                                const weight_t* __restrict__ weight, weight_t* __restrict__ grad_weight,
                                float* __restrict__ grad_scores) {
  using acc_t = learned_acc_t<grad_t, weight_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < params.numel; i += stride) {
    const int64_t at = stored_offset(params, i);
    const acc_t w = grad_scores ? static_cast<acc_t>(weight[params.weight_stored_alike ? at : i]) : acc_t(0);
    acc_t sum = acc_t(0);
    for (int64_t layer = 0; layer < params.num_layers; ++layer) {
      const acc_t g = static_cast<acc_t>(grad[layer * params.numel + at]);
      if (grad_weight) sum += source.keep(params, layer, i) ? g : acc_t(0);
      if (grad_scores) grad_scores[layer * params.numel + i] = static_cast<float>(g * w);
    }
    if (grad_weight) grad_weight[i] = static_cast<weight_t>(sum);
  }
}

template <typename Source>
void forward_cuda(const LearnedMaskParams& params, const Source& source, const at::Tensor& weight,
                  const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "learned_masks_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "learned_masks_cuda_out", [&] {
      using out_t = scalar_t;
      forward_kernel<Source, in_t, out_t><<<grid_size(params.numel), kMaskThreads, 0, stream>>>(
          params, source, weight.const_data_ptr<in_t>(), out.mutable_data_ptr<out_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

// weight: read for grad_scores only (undefined for the packed masks); the weight's dtype is grad_weight's, or
// weight's when grad_weight is not asked for.
template <typename Source>
void backward_cuda(const LearnedMaskParams& params, const Source& source, const at::Tensor& grad,
                   const at::Tensor& weight, const at::Tensor& grad_weight, const at::Tensor& grad_scores) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::ScalarType weight_type = grad_weight.defined() ? grad_weight.scalar_type() : weight.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "learned_masks_backward_cuda", [&] {
    using grad_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight_type, "learned_masks_backward_cuda_w", [&] {
      using weight_t = scalar_t;
      backward_kernel<Source, grad_t, weight_t><<<grid_size(params.numel), kMaskThreads, 0, stream>>>(
          params, source, grad.const_data_ptr<grad_t>(),
          grad_scores.defined() ? weight.const_data_ptr<weight_t>() : nullptr,
          grad_weight.defined() ? grad_weight.mutable_data_ptr<weight_t>() : nullptr,
          grad_scores.defined() ? grad_scores.mutable_data_ptr<float>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void learned_forward_cuda(const LearnedMaskParams& params, const at::Tensor& weight, const at::Tensor& scores,
                          const at::Tensor& thresholds, const at::Tensor& out) {
  forward_cuda(params, LearnedMaskSource{scores.const_data_ptr<float>(), thresholds.const_data_ptr<int64_t>()},
               weight, out);
}

void packed_forward_cuda(const LearnedMaskParams& params, const at::Tensor& weight, const at::Tensor& bits,
                         const at::Tensor& out) {
  forward_cuda(params, PackedMaskSource{bits.const_data_ptr<uint8_t>()}, weight, out);
}

void learned_backward_cuda(const LearnedMaskParams& params, const at::Tensor& grad, const at::Tensor& weight,
                           const at::Tensor& scores, const at::Tensor& thresholds, const at::Tensor& grad_weight,
                           const at::Tensor& grad_scores) {
  backward_cuda(params, LearnedMaskSource{scores.const_data_ptr<float>(), thresholds.const_data_ptr<int64_t>()},
                grad, weight, grad_weight, grad_scores);
}

void packed_backward_cuda(const LearnedMaskParams& params, const at::Tensor& grad, const at::Tensor& bits,
                          const at::Tensor& grad_weight) {
  backward_cuda(params, PackedMaskSource{bits.const_data_ptr<uint8_t>()}, grad, at::Tensor(), grad_weight,
                at::Tensor());
}

constexpr LearnedMaskKernels kCudaKernels{&learned_forward_cuda, &packed_forward_cuda, &learned_backward_cuda,
                                          &packed_backward_cuda};

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CUDA, m) { register_learned_mask_ops<kCudaKernels>(m); }

}  // namespace wtext
