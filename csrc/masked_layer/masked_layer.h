// What the masked layer ops (masked_conv2d, masked_linear) share: one layer's mask on one weight, the checks of
// their common arguments, and the gradient tuple of their backward ops. Each op's own schema, checks, autograd and
// autocast kernels live in its folder (csrc/masked_conv2d/, csrc/masked_linear/).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <tuple>

#include "masked_layer/output_mask.h"
#include "tied_masked_weights/tied_masked_weights.h"

namespace wtext {

// One layer's mask on one weight, planned once, as the masked layer ops use it in forward and backward, for mask
// arguments the op has checked (check_mask_plan). The mask kernels are called directly rather than through the
// dispatcher: the layer ops run once per tied application, so every op call saved is host time saved L times per
// step.
class MaskedLayerWeight {
 public:
  MaskedLayerWeight(const at::Tensor& weight, int64_t seed, int64_t layer, double density, const std::string& pattern,
                    int64_t nm_n, int64_t nm_m);

  // W ⊙ M written by one kernel directly in `dtype` and `format` (Contiguous, or ChannelsLast for a 4-d weight, so
  // a channels_last convolution needs no weight reorder). The layer ops keep it for the backward only when x needs a
  // gradient (the one GEMM that reads it); the stacked tied views are never kept (see tied_masked_weights).
  at::Tensor masked(at::ScalarType dtype, at::MemoryFormat format) const;

  // dW = grad_effective_weight ⊙ M, in weight's dtype (the single-layer case of the fused reduction). A
  // channels_last gradient, as a channels_last convolution's backward gives, is read in place.
  at::Tensor gradient(const at::Tensor& grad_effective_weight) const;

 private:
  at::Tensor weight_;
  TiedMaskPlan plan_;
  const TiedMaskKernels* kernels_;
};

// The one rule for the layout of outputs and gradients: channels_last when x is a channels_last 4-d tensor (and not
// also row-major), else row-major. The fake kernels (wtext/ops/fake.py) call it too.
at::MemoryFormat layer_memory_format(const at::Tensor& x);

// The checks below read shapes (as SymInts), dtypes and devices, never data, so the fake kernels run them too, through
// each op's check function.

// Floating x and bias, on weight's device.
void check_layer_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias);

// bias of shape [out]. Checked after the op has checked weight's shape: with a weight of the wrong rank, the error
// must be about the weight, not about a bias that disagrees with it.
void check_bias_shape(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& weight);

// A backward op's masked_weight (the forward's W ⊙ M, reused for grad_x): weight's shape, x's dtype and device;
// errors name the argument and the value. None passes (the backward regenerates it). Its layout is not checked: any
// layout gives the same gradients, x's layout only spares the backend a reorder.
void check_masked_weight(const char* op, const std::optional<at::Tensor>& masked_weight, const at::Tensor& x,
                         const at::Tensor& weight);

// A backward op's grad_out against the forward's output: its shape, a floating-point dtype (it is cast to x's dtype,
// as the forward's output had) and x's device; errors name grad_out and show what was expected.
void check_grad_out(const char* op, const at::Tensor& grad_out, c10::SymIntArrayRef output_shape,
                    const at::Tensor& x);

// The checks of a backward op after those of its x and weight: grad_out against the forward's output, masked_weight,
// and the mask arguments when output_mask asks for a gradient (only then is the mask made).
void check_layer_backward(const char* op, const at::Tensor& grad_out, c10::SymIntArrayRef output_shape,
                          const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& masked_weight,
                          int64_t layer, double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                          std::array<bool, 2> output_mask);

// (grad_x, grad_weight) of a masked layer's backward op; an entry its output_mask did not ask for is left empty
// (None in Python), so its GEMM never runs.
using LayerGradients = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>>;

// The typed dispatcher handle of the op `name` ("wtext::masked_conv2d"), whose C++ signature is `Signature` (each
// op's header declares it once).
template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// How many arguments a function signature takes: an op's autograd kernel returns one gradient per argument.
template <typename Signature>
struct ArgumentCount;

template <typename Result, typename... Arguments>
struct ArgumentCount<Result(Arguments...)> {
  static constexpr std::size_t value = sizeof...(Arguments);
};

}  // namespace wtext
