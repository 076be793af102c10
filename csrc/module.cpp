// The Python module wtext._C. Importing it runs the static TORCH_LIBRARY registrations: the ops are reached through
// torch.ops.wtext. The module itself holds what the fake kernels (wtext/ops/fake.py) share with the ops: each op's
// argument checks (check_<op>, taking the op's arguments) and the rules for the layout of its outputs. So every check
// is written once, here in C++, and the fake kernels refuse what the ops refuse, with the same messages.
#include <torch/csrc/utils/pybind.h>

#include "anderson/anderson.h"
#include "learned_masks/learned_masks.h"
#include "masked_conv2d/masked_conv2d.h"
#include "masked_layer/masked_layer.h"
#include "masked_linear/masked_linear.h"
#include "tied_masked_weights/tied_masked_weights.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "wtext's custom ops (registered under torch.ops.wtext on import), their argument checks and layouts";
  m.def("check_mask", &wtext::check_mask);
  m.def("check_tied_masked_weights", &wtext::check_tied_masked_weights);
  m.def("check_tied_masked_weights_backward", &wtext::check_tied_masked_weights_backward);
  m.def("check_masked_conv2d", &wtext::check_masked_conv2d);
  m.def("check_masked_conv2d_backward", &wtext::check_masked_conv2d_backward);
  m.def("check_masked_linear", &wtext::check_masked_linear);
  m.def("check_masked_linear_backward", &wtext::check_masked_linear_backward);
  m.def("check_learned_mask_thresholds", &wtext::check_learned_mask_thresholds);
  m.def("check_learned_masked_weights", &wtext::check_learned_masked_weights);
  m.def("check_learned_masked_weights_backward", &wtext::check_learned_masked_weights_backward);
  m.def("check_packed_masked_weights", &wtext::check_packed_masked_weights);
  m.def("check_packed_masked_weights_backward", &wtext::check_packed_masked_weights_backward);
  m.def("check_anderson_step", &wtext::check_anderson_step);
  m.def("check_anderson_tracked_step", &wtext::check_anderson_tracked_step);
  m.def("empty_tied_masked_weights", &wtext::empty_tied_masked_weights);
  m.def("layer_memory_format", &wtext::layer_memory_format);
}
