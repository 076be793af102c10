"""Builds wtext and its extension wtext._C from csrc/.

C++ (CPU) sources are always built. CUDA sources are built when torch is a CUDA build and a CUDA toolkit is found
(CUDA_HOME); WTEXT_CUDA=1 forces them (and fails clearly if that is impossible), WTEXT_CUDA=0 leaves them out.
The default GPU architectures are sm_80 and sm_90; TORCH_CUDA_ARCH_LIST overrides them.

The extension must be compiled against the torch it will run with, so install without build isolation:
    pip install --no-build-isolation .
"""

import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "wtext: PyTorch must be installed before building the extension, and the build must see it:\n"
        "    pip install torch && pip install --no-build-isolation .\n"
        "(pip's default build isolation hides the installed torch from this script.)"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def cuda_requested() -> bool:
    """Whether to compile the CUDA sources: WTEXT_CUDA=0/1 decides, otherwise build them when we can."""
    choice = os.environ.get("WTEXT_CUDA", "").strip()
    can_build = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if choice == "0":
        return False
    if choice == "1":
        if not can_build:
            sys.exit(
                f"wtext: WTEXT_CUDA=1 but CUDA sources cannot be built: torch {torch.__version__} "
                f"(CUDA {torch.version.cuda}), CUDA_HOME={cpp_extension.CUDA_HOME}. Install a CUDA build of torch and "
                "set CUDA_HOME to the toolkit (e.g. /usr/local/cuda)."
            )
        return True
    if choice:
        sys.exit(f"wtext: WTEXT_CUDA must be 0 or 1; got WTEXT_CUDA={choice!r}")
    return can_build


def extension():
    with_cuda = cuda_requested()
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    # -fopenmp: at::parallel_for is a header template; without it the CPU kernels would run on one thread.
    cxx_flags = ["-O3", "-fopenmp"]
    nvcc_flags = ["-O3", "--use_fast_math", "-lineinfo"]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        print(f"wtext: building CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        return cpp_extension.CUDAExtension(
            "wtext._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=[("WTEXT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=["-fopenmp"],
        )
    print("wtext: building CPU kernels only (no CUDA build of torch or no CUDA_HOME, or WTEXT_CUDA=0)")
    return cpp_extension.CppExtension(
        "wtext._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


# The package's metadata, dependencies and console scripts are in pyproject.toml; only the extension is built here.
setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    zip_safe=False,
)
