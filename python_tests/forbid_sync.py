"""A context manager that makes every tensor-to-host read raise, to prove a loop never synchronizes."""

import contextlib

import torch

HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__", "cpu")


@contextlib.contextmanager
def forbid_host_reads():
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def make_trap(name):
        def trap(self, *args, **kwargs):
            raise AssertionError(f"host read Tensor.{name}() inside a loop that must not synchronize")
        return trap

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, make_trap(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
