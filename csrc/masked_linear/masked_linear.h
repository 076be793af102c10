// masked_linear's C++ signatures, declared once, as masked_conv2d.h does for the convolution (which lists what a
// change to the op's arguments touches: the same places, in masked_linear/).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "masked_layer/masked_layer.h"

namespace wtext {

// x @ (W ⊙ M_layer)^T + bias returning `Result`: the output (masked_linear) or the output and the masked weight
// (masked_linear_forward).
template <typename Result>
using MaskedLinearSignature = Result(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, int64_t seed, int64_t layer,
                                     double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m);

// The backward returning `Result`: (grad_x, grad_weight) for the gradients output_mask asks for
// (masked_linear_backward), or nothing (its checks); masked_weight as in masked_conv2d_backward.
template <typename Result>
using MaskedLinearBackwardSignature = Result(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                             const std::optional<at::Tensor>& masked_weight, int64_t seed,
                                             int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                             int64_t nm_m, std::array<bool, 2> output_mask);

// masked_linear_backward as registered (output_mask a list, checked by output_mask_pair).
using MaskedLinearBackwardOpSignature =
    LayerGradients(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                   const std::optional<at::Tensor>& masked_weight, int64_t seed, int64_t layer, double density,
                   c10::string_view pattern, int64_t nm_n, int64_t nm_m, const c10::List<bool>& output_mask);

MaskedLinearSignature<at::Tensor> masked_linear;
MaskedLinearSignature<std::tuple<at::Tensor, at::Tensor>> masked_linear_forward;
MaskedLinearBackwardSignature<LayerGradients> masked_linear_backward;

// The argument checks of the forward ops (returning the output's shape [..., out]) and of the backward, as
// masked_conv2d's.
MaskedLinearSignature<std::vector<c10::SymInt>> check_masked_linear;
MaskedLinearBackwardSignature<void> check_masked_linear_backward;

}  // namespace wtext
