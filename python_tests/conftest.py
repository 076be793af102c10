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
