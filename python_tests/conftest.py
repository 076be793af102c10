import pytest
import torch

import wtext.ops

CUDA_READY = torch.cuda.is_available() and wtext.ops.HAS_CUDA_KERNELS
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and CUDA kernels"))]
requires_cuda = pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and wtext built with CUDA kernels")


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


# On a GPU machine only the CUDA cases add anything to what CI runs on its CPU, and the whole suite does not fit
# the lent machines' time (benchmarks/gpu_check.sh), so `pytest --cuda-only` keeps just those: the device="cuda"
# cases and the tests whose GPU skip reason begins with "needs a GPU" (the convention of every GPU-only test here).
GPU_SKIP_REASON = "needs a GPU"


def pytest_addoption(parser):
    parser.addoption("--cuda-only", action="store_true",
                     help="run only the tests that exercise CUDA (for GPU machines; CI runs the rest on CPU)")


def _exercises_cuda(item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and str(callspec.params.get("device", "")) == "cuda":
        return True
    return any(str(mark.kwargs.get("reason", "")).startswith(GPU_SKIP_REASON) for mark in item.iter_markers("skipif"))


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--cuda-only"):
        return
    selected = [item for item in items if _exercises_cuda(item)]
    config.hook.pytest_deselected(items=[item for item in items if not _exercises_cuda(item)])
    items[:] = selected
