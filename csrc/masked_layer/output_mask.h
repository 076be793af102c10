#pragma once

#include <ATen/core/List.h>

#include <array>

namespace wtext {

// A backward op's output_mask as the pair it must be (which of its two gradients to return). The schemas take
// bool[] rather than bool[2]: with bool[2] a list of another length fails in the dispatcher's conversion, whose
// message names neither the op nor the argument.
std::array<bool, 2> output_mask_pair(const char* op, const c10::List<bool>& output_mask);

}  // namespace wtext
