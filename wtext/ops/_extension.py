"""Loads the compiled extension, which registers the ops under torch.ops.wtext."""

import warnings

import torch  # noqa: F401  (the extension links against torch's libraries, so torch must be loaded first)

try:
    from wtext import _C  # noqa: F401
except ImportError as error:  # pragma: no cover - only reached on a broken install
    raise ImportError(
        "wtext's compiled extension wtext._C could not be loaded. Build it against the torch you run with:\n"
        "    pip install --no-build-isolation .      (or: python setup.py build_ext --inplace)\n"
        f"Original error: {error}"
    ) from error

from .toolchain import bundled_libstdcxx_warning  # noqa: E402

_toolchain_problem = bundled_libstdcxx_warning(_C.__file__)
if _toolchain_problem:
    warnings.warn(_toolchain_problem, RuntimeWarning, stacklevel=2)

# True when the extension holds CUDA kernels (built with a CUDA toolkit and a CUDA build of torch).
HAS_CUDA_KERNELS = torch._C._dispatch_has_kernel_for_dispatch_key("wtext::tied_masked_weights", "CUDA")
