// masked_conv2d's C++ signatures, declared once: the implementations and the check function (masked_conv2d.cpp), the
// typed dispatcher calls (the autograd kernel in masked_conv2d_autograd.cpp, the autocast kernels) and the Python
// binding of the check (csrc/module.cpp) all take them from here.
//
// Changing the op's arguments touches:
//   - the schema strings (masked_conv2d.cpp),
//   - the signatures in this file,
//   - the bodies that read the arguments: the op, its checks (check_masked_conv2d, which the fake kernels call too)
//     and its backward (masked_conv2d.cpp),
//   - the autograd kernel, which saves the arguments for the backward (masked_conv2d_autograd.cpp, and
//     masked_layer/layer_autograd.cpp for the mask arguments every masked layer op shares),
//   - the Python front end (wtext/ops/masked.py).
// The fake kernels (wtext/ops/fake.py) and the Python autograd formulas (wtext/ops/autograd.py) pass the arguments on
// without counting them (the formulas by the schema's names), so they need an edit only when a tensor argument or
// output_mask changes.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "masked_layer/masked_layer.h"

namespace wtext {

// conv2d(x, W ⊙ M_layer, bias) returning `Result`: the output (masked_conv2d) or the output and the masked weight
// it computed (masked_conv2d_forward, which the autograd kernel calls to keep W ⊙ M for the backward).
template <typename Result>
using MaskedConv2dSignature = Result(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, int64_t seed, int64_t layer,
                                     double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

// The backward returning `Result`: (grad_x, grad_weight) for the gradients output_mask asks for
// (masked_conv2d_backward), or nothing (its checks). masked_weight is the forward's W ⊙ M, or None to regenerate it.
template <typename Result>
using MaskedConv2dBackwardSignature = Result(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& masked_weight, int64_t seed,
                                             int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                             int64_t nm_m, at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation, std::array<bool, 2> output_mask);

// masked_conv2d_backward as registered (output_mask a list, checked by output_mask_pair).
using MaskedConv2dBackwardOpSignature =
    LayerGradients(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& masked_weight, int64_t seed, int64_t layer, double density,
                   c10::string_view pattern, int64_t nm_n, int64_t nm_m, at::IntArrayRef stride,
                   at::IntArrayRef padding, at::IntArrayRef dilation, const c10::List<bool>& output_mask);

MaskedConv2dSignature<at::Tensor> masked_conv2d;
MaskedConv2dSignature<std::tuple<at::Tensor, at::Tensor>> masked_conv2d_forward;
MaskedConv2dBackwardSignature<LayerGradients> masked_conv2d_backward;

// The argument checks of the forward ops (returning the output's shape [N, out, H_out, W_out]) and of the backward;
// errors name the argument and the bad value. They read shapes (as SymInts), dtypes and devices, never data.
MaskedConv2dSignature<std::vector<c10::SymInt>> check_masked_conv2d;
MaskedConv2dBackwardSignature<void> check_masked_conv2d_backward;

}  // namespace wtext
