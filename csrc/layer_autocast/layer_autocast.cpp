// Autocast for masked_conv2d and masked_linear: inside torch.autocast they compute in the autocast dtype, as
// F.conv2d and F.linear do (both are on PyTorch's lower-precision lists for CUDA and CPU).
//
// Without these kernels the dispatcher passed straight through the autocast keys, so a float32 x kept the whole
// layer in float32: a DEQ cell built from masked_conv2d ran its convolutions in float32 inside a bf16 autocast
// region (benchmarks/bench_deq.py --bf16 did), while the same cell with F.conv2d would have run them in bf16.
//
// Only x is cast. The ops write the masked weight directly in x's dtype (one fused mask+cast kernel) and cast the
// bias themselves, so a float32 master weight needs no cast of its own; float64 and non-floating x are left alone,
// like autocast does.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <optional>

namespace wtext {

namespace {

// Calls `op` with x cast to kDevice's autocast dtype (a no-op for float64, as in autocast's own casts) and the
// other arguments as they are, with the autocast key excluded so the call reaches autograd and the kernels.
template <c10::DeviceType kDevice, typename Op, typename... Rest>
at::Tensor call_in_autocast_dtype(const Op& op, const at::Tensor& x, const Rest&... rest) {
  const at::Tensor cast_x = at::autocast::cached_cast(at::autocast::get_autocast_dtype(kDevice), x, kDevice);
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  return op.call(cast_x, rest...);
}

template <c10::DeviceType kDevice>
at::Tensor masked_conv2d_autocast(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                  int64_t nm_m, at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wtext::masked_conv2d", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         int64_t, int64_t, double, c10::string_view, int64_t, int64_t, at::IntArrayRef,
                                         at::IntArrayRef, at::IntArrayRef)>();
  return call_in_autocast_dtype<kDevice>(op, x, weight, bias, seed, layer, density, pattern, nm_n, nm_m, stride,
                                         padding, dilation);
}

template <c10::DeviceType kDevice>
at::Tensor masked_linear_autocast(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  int64_t seed, int64_t layer, double density, c10::string_view pattern, int64_t nm_n,
                                  int64_t nm_m) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("wtext::masked_linear", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         int64_t, int64_t, double, c10::string_view, int64_t, int64_t)>();
  return call_in_autocast_dtype<kDevice>(op, x, weight, bias, seed, layer, density, pattern, nm_n, nm_m);
}

}  // namespace

TORCH_LIBRARY_IMPL(wtext, AutocastCPU, m) {
  m.impl("masked_conv2d", &masked_conv2d_autocast<c10::DeviceType::CPU>);
  m.impl("masked_linear", &masked_linear_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(wtext, AutocastCUDA, m) {
  m.impl("masked_conv2d", &masked_conv2d_autocast<c10::DeviceType::CUDA>);
  m.impl("masked_linear", &masked_linear_autocast<c10::DeviceType::CUDA>);
}

}  // namespace wtext
