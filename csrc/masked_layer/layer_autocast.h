// Autocast kernels of the masked layer ops: inside torch.autocast they compute in the autocast dtype, as F.conv2d
// and F.linear do (both are on PyTorch's lower-precision lists for CUDA and CPU).
//
// Without them the dispatcher would pass straight through the autocast keys, and a float32 x would keep the whole
// layer in float32 inside a bf16 autocast region, where the same layer built from F.conv2d runs in bf16.
//
// Only x is cast. The ops write the masked weight directly in x's dtype (one fused mask+cast kernel) and cast the
// bias themselves, so a float32 master weight needs no cast of its own; float64 and non-floating x are left alone,
// like autocast does.
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "masked_layer/masked_layer.h"

namespace wtext {

template <typename Signature>
struct LayerAutocast;

// The autocast kernel of the op `kName` whose signature is `Tensor(x, rest...)`: calls the op with x cast to
// kDevice's autocast dtype (a no-op for float64, as in autocast's own casts) and the other arguments as they are,
// with the autocast key excluded so the call reaches autograd and the kernels.
template <typename... Rest>
struct LayerAutocast<at::Tensor(const at::Tensor&, Rest...)> {
  template <const char* kName, c10::DeviceType kDevice>
  static at::Tensor kernel(const at::Tensor& x, Rest... rest) {
    static const auto op = typed_op<at::Tensor(const at::Tensor&, Rest...)>(kName);
    const at::Tensor cast_x = at::autocast::cached_cast(at::autocast::get_autocast_dtype(kDevice), x, kDevice);
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(
        at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
    return op.call(cast_x, rest...);
  }
};

// Registers the autocast kernels (CPU and CUDA) of the op `kName` ("wtext::masked_conv2d"), whose C++ signature is
// `Signature`, into m: the library of the AutocastCPU key (device CPU) or of the AutocastCUDA key (device CUDA).
template <typename Signature, const char* kName>
void register_layer_autocast(torch::Library& m, c10::DeviceType device) {
  using Autocast = LayerAutocast<Signature>;
  if (device == c10::DeviceType::CPU) {
    m.impl(kName, &Autocast::template kernel<kName, c10::DeviceType::CPU>);
  } else {
    m.impl(kName, &Autocast::template kernel<kName, c10::DeviceType::CUDA>);
  }
}

}  // namespace wtext
