#include "masked_layer/output_mask.h"

#include <c10/util/Exception.h>

namespace wtext {

std::array<bool, 2> output_mask_pair(const char* op, const c10::List<bool>& output_mask) {
  TORCH_CHECK(output_mask.size() == 2, op, ": output_mask must hold 2 bools (which of the two gradients to return); "
              "got ", output_mask.size());
  return {output_mask.get(0), output_mask.get(1)};
}

}  // namespace wtext
