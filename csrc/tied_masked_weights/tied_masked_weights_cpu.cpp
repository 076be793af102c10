// CPU element loops of the mask ops, parallel over weight elements.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "tied_masked_weights/tied_masked_weights.h"

namespace wtext {

namespace {

// Elements per parallel task: hashing is cheap, so tasks must be large enough to amortize scheduling.
constexpr int64_t kGrainSize = 1 << 14;

template <MaskPattern P, typename in_t, typename out_t>
void forward_loop(const TiedMaskParams& params, const in_t* weight, out_t* out) {
  at::parallel_for(0, params.numel, kGrainSize, [&](int64_t begin, int64_t end) {
    for (int j = 0; j < params.num_layers; ++j) {
      out_t* out_layer = out + j * params.numel;
      for (int64_t i = begin; i < end; ++i) {
        const bool kept = keep<P>(params.layers[j], static_cast<uint64_t>(i), params.reduction, params.nm_n, params.nm_m);
        const out_t value = weight ? static_cast<out_t>(weight[i]) : out_t(1);
        out_layer[i] = kept ? value : out_t(0);
      }
    }
  });
}

template <MaskPattern P, typename grad_t, typename weight_t>
void backward_loop(const TiedMaskParams& params, const grad_t* grad, weight_t* grad_weight, bool accumulate) {
  using acc_t = at::opmath_type<grad_t>;
  at::parallel_for(0, params.numel, kGrainSize, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t sum = accumulate ? static_cast<acc_t>(grad_weight[i]) : acc_t(0);
      for (int j = 0; j < params.num_layers; ++j) {
        if (keep<P>(params.layers[j], static_cast<uint64_t>(i), params.reduction, params.nm_n, params.nm_m)) {
          sum += static_cast<acc_t>(grad[j * params.numel + i]);
        }
      }
      grad_weight[i] = static_cast<weight_t>(sum);
    }
  });
}

void forward_cpu(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& weight, const at::Tensor& out) {
  const at::ScalarType in_type = weight.defined() ? weight.scalar_type() : out.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in_type, "tied_masked_weights_cpu", [&] {
    using in_t = scalar_t;
    const in_t* weight_ptr = weight.defined() ? weight.const_data_ptr<in_t>() : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "tied_masked_weights_cpu_out", [&] {
      using out_t = scalar_t;
      dispatch_pattern(pattern, [&](auto p) {
        forward_loop<decltype(p)::value, in_t, out_t>(params, weight_ptr, out.mutable_data_ptr<out_t>());
      });
    });
  });
}

void backward_cpu(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& grad,
                  const at::Tensor& grad_weight, bool accumulate) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "tied_masked_weights_backward_cpu", [&] {
    using grad_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_weight.scalar_type(), "tied_masked_weights_backward_cpu_w", [&] {
      using weight_t = scalar_t;
      dispatch_pattern(pattern, [&](auto p) {
        backward_loop<decltype(p)::value, grad_t, weight_t>(params, grad.const_data_ptr<grad_t>(),
                                                            grad_weight.mutable_data_ptr<weight_t>(), accumulate);
      });
    });
  });
}

constexpr TiedMaskKernels kCpuKernels{&forward_cpu, &backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(wtext, CPU, m) { register_tied_mask_ops<kCpuKernels>(m); }

}  // namespace wtext
