// masked_conv2d's C++ signatures, declared once. The implementations (masked_conv2d.cpp) and every typed dispatcher
// call (the autograd kernel in masked_conv2d_autograd.cpp, the autocast kernels) use them, so changing the op's
// arguments means editing the schema strings and this file.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "masked_layer/masked_layer.h"

namespace wtext {

// conv2d(x, W ⊙ M_layer, bias) returning `Result`: the output (masked_conv2d) or the output and the masked weight
// it computed (masked_conv2d_forward, which the autograd kernel calls to keep W ⊙ M for the backward).
template <typename Result>
using MaskedConv2dSignature = Result(const at::Tensor& x, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, int64_t seed, int64_t layer,
                                     double density, c10::string_view pattern, int64_t nm_n, int64_t nm_m,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);

// (grad_x, grad_weight) for the gradients output_mask asks for. masked_weight is the forward's W ⊙ M, or None to
// regenerate it.
using MaskedConv2dBackwardSignature = LayerGradients(const at::Tensor& grad_out, const at::Tensor& x,
                                                     const at::Tensor& weight,
                                                     const std::optional<at::Tensor>& masked_weight, int64_t seed,
                                                     int64_t layer, double density, c10::string_view pattern,
                                                     int64_t nm_n, int64_t nm_m, at::IntArrayRef stride,
                                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                                     std::array<bool, 2> output_mask);

MaskedConv2dSignature<at::Tensor> masked_conv2d;
MaskedConv2dSignature<std::tuple<at::Tensor, at::Tensor>> masked_conv2d_forward;
MaskedConv2dBackwardSignature masked_conv2d_backward;

}  // namespace wtext
