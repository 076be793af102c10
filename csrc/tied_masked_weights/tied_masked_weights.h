// Device-independent bodies of the mask ops: argument checks, output allocation, chunking over layers.
// Each backend supplies only the element loops (TiedMaskKernels) and registers the ops for its dispatch key.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "mask/mask_plan.h"

namespace wtext {

struct TiedMaskKernels {
  // out[j, i] = keep_j(i) ? weight[i] : 0 for the params' layers j, cast to out's dtype.
  // An undefined weight means "write the mask itself" (1 where kept).
  void (*forward)(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& weight, const at::Tensor& out);
  // grad_weight[i] (+)= sum_j keep_j(i) ? grad[j, i] : 0, summed in the op-math type of grad.
  void (*backward)(const TiedMaskParams& params, MaskPattern pattern, const at::Tensor& grad,
                   const at::Tensor& grad_weight, bool accumulate);
};

at::Tensor mask_op(const TiedMaskKernels& kernels, const at::Tensor& like, int64_t seed, int64_t layer, double density,
                   const std::string& pattern, int64_t nm_n, int64_t nm_m);

at::Tensor tied_masked_weights_op(const TiedMaskKernels& kernels, const at::Tensor& weight, at::IntArrayRef layers,
                                  int64_t seed, double density, const std::string& pattern, int64_t nm_n, int64_t nm_m,
                                  const std::string& mode, std::optional<at::ScalarType> dtype);

at::Tensor tied_masked_weights_backward_op(const TiedMaskKernels& kernels, const at::Tensor& grad,
                                           const at::Tensor& weight, at::IntArrayRef layers, int64_t seed,
                                           double density, const std::string& pattern, int64_t nm_n, int64_t nm_m,
                                           const std::string& mode);

}  // namespace wtext

namespace wtext {

// Each backend's element loops by device type, for the masked layer ops, which call them directly rather than
// through the dispatcher (they run once per tied application, so every op call saved is host time saved L times).
void register_tied_mask_kernels(c10::DeviceType device_type, const TiedMaskKernels& kernels);
const TiedMaskKernels& tied_mask_kernels(c10::DeviceType device_type);

// Registers the three mask ops for one backend's dispatch key (m), bound to its element loops.
template <const TiedMaskKernels& kernels>
void register_tied_mask_ops(torch::Library& m, c10::DeviceType device_type) {
  register_tied_mask_kernels(device_type, kernels);
  m.impl("mask", [](const at::Tensor& like, int64_t seed, int64_t layer, double density, c10::string_view pattern,
                    int64_t nm_n, int64_t nm_m) {
    return mask_op(kernels, like, seed, layer, density, std::string(pattern), nm_n, nm_m);
  });
  m.impl("tied_masked_weights",
         [](const at::Tensor& weight, at::IntArrayRef layers, int64_t seed, double density, c10::string_view pattern,
            int64_t nm_n, int64_t nm_m, c10::string_view mode, std::optional<at::ScalarType> dtype) {
           return tied_masked_weights_op(kernels, weight, layers, seed, density, std::string(pattern), nm_n, nm_m,
                                         std::string(mode), dtype);
         });
  m.impl("tied_masked_weights_backward",
         [](const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef layers, int64_t seed, double density,
            c10::string_view pattern, int64_t nm_n, int64_t nm_m, c10::string_view mode) {
           return tied_masked_weights_backward_op(kernels, grad, weight, layers, seed, density, std::string(pattern),
                                                  nm_n, nm_m, std::string(mode));
         });
}

}  // namespace wtext

namespace wtext {

// One layer's mask on one weight, planned once, as the masked conv/linear ops use it in forward and backward.
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

// Checks shared by the masked layer ops: floating x and bias, same device for x/weight/bias.
void check_layer_inputs(const char* op, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias);

// bias of shape [out]. Checked after the op has checked weight's shape: with a weight of the wrong rank, the error
// must be about the weight, not about a bias that disagrees with it.
void check_bias_shape(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& weight);

// Checks a masked layer backward op's masked_weight (the forward's W ⊙ M, reused for grad_x): weight's shape, x's
// dtype and device; errors name the argument and the value. None passes (the backward regenerates it). Its layout is
// not checked: any layout gives the same gradients, x's layout only spares the backend a reorder.
void check_masked_weight(const char* op, const std::optional<at::Tensor>& masked_weight, const at::Tensor& x,
                         const at::Tensor& weight);

// Checks a masked layer backward op's grad_out against the forward's output: its shape, a floating-point dtype (it is
// cast to x's dtype, as the forward's output had) and x's device; errors name grad_out and show what was expected.
void check_grad_out(const char* op, const at::Tensor& grad_out, at::IntArrayRef output_shape, const at::Tensor& x);

// (grad_x, grad_weight) of a masked layer's backward op; an entry its output_mask did not ask for is left empty
// (None in Python), so its GEMM never runs.
using LayerGradients = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>>;

}  // namespace wtext
