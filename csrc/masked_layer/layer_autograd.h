// What the autograd kernels of the masked layer ops share (each op's autograd::Function lives in its folder).
//
// These ops run once per tied application, so their host cost is paid L times per step. Registered from Python
// (torch.library.register_autograd) their forward+backward cost about 3x the host time of F.conv2d's, enough to
// leave a GPU idle between kernels; as C++ autograd::Functions they cost a fraction of that. The backward calls the
// registered backward op through the dispatcher, so its autograd formula (wtext/ops/autograd.py) still gives
// double backward. The forward runs the *_forward op, which also returns the masked weight; when x needs a gradient
// it is kept, and the backward's grad_x GEMM reuses it instead of running the mask kernel again.
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <array>
#include <optional>

#include "masked_layer/masked_layer.h"

namespace wtext {

// The mask arguments every masked layer op takes after (x, weight, bias), kept for the backward.
void save_mask_arguments(torch::autograd::AutogradContext* ctx, int64_t seed, int64_t layer, double density,
                         c10::string_view pattern, int64_t nm_n, int64_t nm_m, const std::optional<at::Tensor>& bias);

// Which of (x, weight) this backward pass needs a gradient for: in a DEQ's adjoint solve only x, for a frozen
// weight or a network's input layer only one. The backward op then skips the other GEMM (one of the three
// GEMM-sized passes of a conv's fwd+bwd).
std::array<bool, 2> requested_gradients(torch::autograd::AutogradContext* ctx);

// Whether the forward keeps W ⊙ M for the backward (see layer_autograd.cpp). Decided before apply(), which runs the
// forward with grad mode off.
bool keeps_masked_weight(const at::Tensor& x, const at::Tensor& weight);

// A saved masked weight, or None when the forward did not keep one.
std::optional<at::Tensor> optional_if_defined(const at::Tensor& masked_weight);

// Runs a backward op (`call`) with the mask arguments save_mask_arguments kept, then `rest` (the op's own
// arguments after nm_m), for the gradients the pass asks for; returns (grad_x, grad_weight), undefined where not
// asked for. Unless the backward itself is being recorded (create_graph=True, for double backward), the op's
// autograd kernel is skipped: it is the Python formula of wtext/ops/autograd.py, and entering the interpreter on
// every backward cost ~15 us of host time.
template <typename BackwardOp, typename... Rest>
std::tuple<at::Tensor, at::Tensor> run_backward_op(torch::autograd::AutogradContext* ctx, const BackwardOp& op,
                                                   const at::Tensor& grad_out, const Rest&... rest) {
  const std::array<bool, 2> output_mask = requested_gradients(ctx);
  if (!output_mask[0] && !output_mask[1]) return {};
  const auto saved = ctx->get_saved_variables();
  auto& data = ctx->saved_data;
  const std::string pattern = data["pattern"].toStringRef();
  const auto call = [&] {
    return op.call(grad_out, saved[0], saved[1], optional_if_defined(saved[2]), data["seed"].toInt(),
                   data["layer"].toInt(), data["density"].toDouble(), pattern, data["nm_n"].toInt(),
                   data["nm_m"].toInt(), rest..., c10::List<bool>({output_mask[0], output_mask[1]}));
  };
  LayerGradients gradients;
  if (at::GradMode::is_enabled()) {
    gradients = call();
  } else {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    gradients = call();
  }
  return {std::get<0>(gradients).value_or(at::Tensor()), std::get<1>(gradients).value_or(at::Tensor())};
}

// The gradients an autograd kernel returns for an op of `Signature` with keep_masked_weight appended: x's,
// weight's and bias's, then an undefined one for every other argument (counted from the signature, so a new
// argument needs no edit here).
template <typename Signature>
torch::autograd::variable_list layer_input_gradients(at::Tensor grad_x, at::Tensor grad_weight,
                                                     at::Tensor grad_bias) {
  torch::autograd::variable_list gradients(ArgumentCount<Signature>::value + 1);
  gradients[0] = std::move(grad_x);
  gradients[1] = std::move(grad_weight);
  gradients[2] = std::move(grad_bias);
  return gradients;
}

// dL/dbias = grad_out summed over every dimension but the channel one (reduce_dims), in the bias's dtype; undefined
// without a bias or when the pass does not ask for its gradient.
at::Tensor bias_gradient(torch::autograd::AutogradContext* ctx, const at::Tensor& grad_out,
                         at::IntArrayRef reduce_dims);

}  // namespace wtext
