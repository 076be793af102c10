// Device-independent bodies of the mask ops: argument checks, output allocation, chunking over layers.
// Each backend supplies only the element loops (TiedMaskKernels) and registers the ops for its dispatch key. The
// masked layer ops (csrc/masked_layer) build on the same pieces for one layer.
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

// A 4-d tensor stored channels_last ([out, kh, kw, in] in memory) that is not also row-major (in = 1 or
// kh = kw = 1 make the two orders equal, and then no index map is needed).
bool channels_last_only(const at::Tensor& tensor);

// Whether `stacked` [L, *weight.shape] holds channels_last views of a 4-d weight (and is not also row-major): the
// layout of empty_tied_masked_weights for a channels_last weight, and of the gradient unbind's backward stacks for
// such views. The backward kernels read it in place.
bool stacked_channels_last(const at::Tensor& stacked, const at::Tensor& weight);

// Writes W ⊙ M_l for the plan's layers into out (its layers row-major, or channels_last views when
// `channels_last`). A plan of one chunk may write a single layer's tensor without the layers dim (a masked layer's
// weight).
void write_masked_views(const TiedMaskKernels& kernels, const TiedMaskPlan& plan, const at::Tensor& weight,
                        const at::Tensor& out, bool channels_last);

// dW = sum_l grad_l ⊙ M_l over the plan's layers, in weight's dtype; grad is read in place when `channels_last`.
at::Tensor sum_masked_gradients(const TiedMaskKernels& kernels, const TiedMaskPlan& plan, const at::Tensor& grad,
                                const at::Tensor& weight, bool channels_last);

// A density given as a Scalar (these ops' schemas take one) as a double. A bool or complex number is refused: a
// schema's `float` would turn True into 1.0, a valid density, where the Python front end refuses bools. (The check
// functions below take a double, as pybind11 cannot pass a Scalar: the fake kernels refuse bools themselves.)
double density_number(const c10::Scalar& density);

// The argument checks of the mask ops, each taking its op's arguments; errors name the argument and the bad value.
// They read shapes, dtypes and devices, never data (sizes as SymInts), so the fake kernels (wtext/ops/fake.py) call
// them too.
void check_mask(const at::Tensor& like, int64_t seed, int64_t layer, double density, c10::string_view pattern,
                int64_t nm_n, int64_t nm_m);
void check_tied_masked_weights(const at::Tensor& weight, at::IntArrayRef layers, int64_t seed, double density,
                               c10::string_view pattern, int64_t nm_n, int64_t nm_m, c10::string_view mode,
                               std::optional<at::ScalarType> dtype);
void check_tied_masked_weights_backward(const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef layers,
                                        int64_t seed, double density, c10::string_view pattern, int64_t nm_n,
                                        int64_t nm_m, c10::string_view mode);

// tied_masked_weights' output, uninitialized: [num_layers, *weight.shape] in `dtype` (weight's by default) on weight's
// device. The views take the weight's layout: a channels_last weight (a model moved to channels_last) gets
// channels_last views, which a channels_last convolution takes as they are instead of reordering the weight on every
// call; any other weight gets row-major ones. The fake kernels allocate with it too (num_layers is symbolic there
// when it is a traced tensor's size, as the learned-mask ops' L).
at::Tensor empty_tied_masked_weights(const at::Tensor& weight, c10::SymInt num_layers,
                                     std::optional<at::ScalarType> dtype);

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
  m.impl("mask", [](const at::Tensor& like, int64_t seed, int64_t layer, const c10::Scalar& density,
                    c10::string_view pattern, int64_t nm_n, int64_t nm_m) {
    return mask_op(kernels, like, seed, layer, density_number(density), std::string(pattern), nm_n, nm_m);
  });
  m.impl("tied_masked_weights",
         [](const at::Tensor& weight, at::IntArrayRef layers, int64_t seed, const c10::Scalar& density,
            c10::string_view pattern, int64_t nm_n, int64_t nm_m, c10::string_view mode,
            std::optional<at::ScalarType> dtype) {
           return tied_masked_weights_op(kernels, weight, layers, seed, density_number(density), std::string(pattern),
                                         nm_n, nm_m, std::string(mode), dtype);
         });
  m.impl("tied_masked_weights_backward",
         [](const at::Tensor& grad, const at::Tensor& weight, at::IntArrayRef layers, int64_t seed,
            const c10::Scalar& density, c10::string_view pattern, int64_t nm_n, int64_t nm_m, c10::string_view mode) {
           return tied_masked_weights_backward_op(kernels, grad, weight, layers, seed, density_number(density),
                                                  std::string(pattern), nm_n, nm_m, std::string(mode));
         });
}

}  // namespace wtext
