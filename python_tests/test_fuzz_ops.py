"""A table-driven sweep of bad and odd inputs over every wtext op and argument.

Each case calls one op with one argument replaced (wrong type, out of range, wrong shape, dtype or device, a meta
tensor among real ones, non-contiguous, expanded or empty tensors, NaN densities) and is put in one class:
    clear    raised TypeError / ValueError / RuntimeError / IndexError naming the offending argument
    unclear  raised one of those, but the message does not name it
    crash    raised anything else, or killed the process
    wrong    returned where it must raise, or returned a result unlike plain PyTorch on W ⊙ M
    refused  raised on an input that is odd but valid
    correct  a valid input, and the result equals plain PyTorch's
An error case must be clear and a valid case correct. The cases run in a child process, so a case that kills the
interpreter (a segfault) is reported as a crash instead of ending the test run; the child resumes after it.

Run as a script (python python_tests/test_fuzz_ops.py) it prints every case and its class.
"""

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import wtext.ops as ops
from wtext.nn import learned_reference
from wtext.nn.mask_reference import torch_mask
from wtext.nn.packed_masks import pack_masks, unpack_masks

ERRORS = (TypeError, ValueError, RuntimeError, IndexError)
EXPECTED = {"error": "clear", "valid": "correct"}


@dataclasses.dataclass
class Case:
    id: str
    expect: str  # "error" or "valid"
    run: Callable  # error: calls the op; valid: returns (result, reference)
    names: str = ""  # error: a regex that a message naming the offending argument matches


class Tensor:
    """A tensor built fresh for each call (cases must not share state: some ops update tensors in place)."""

    def __init__(self, build):
        self.build = build

    def __call__(self):
        return self.build()


def t(*shape, dtype=torch.float32, device="cpu"):
    return Tensor(lambda: torch.randn(shape, dtype=dtype, device=device) if dtype.is_floating_point
                  else torch.ones(shape, dtype=dtype, device=device))


TENSOR_ARGS = ("x", "weight", "bias", "scores", "thresholds", "bits")


def build(args: dict, meta: bool = False) -> dict:
    """The arguments of one call, tensors built; `meta` puts the tensor arguments on meta (and mask()'s device)."""
    built = {k: v() if isinstance(v, Tensor) else v for k, v in args.items()}
    if meta:
        built = {k: v.to("meta") if k in TENSOR_ARGS and isinstance(v, torch.Tensor) else v for k, v in built.items()}
        if "device" in built and built["device"] is None:
            built["device"] = "meta"
    return built


def word(name: str) -> str:
    return rf"(?<![\w.]){re.escape(name)}(?!\w)"


# --- reference results: plain PyTorch on W ⊙ M, M from the plain-PyTorch mask function ---

def masked(weight, a):
    mask = torch_mask(weight.shape, int(a["seed"]), int(a["layer"]), float(a["density"]), a["pattern"], a["nm"],
                      dtype=weight.dtype, device=weight.device)
    return weight * mask


def reference_conv(a):
    bias = None if a["bias"] is None else a["bias"].to(a["x"].dtype)
    return F.conv2d(a["x"], masked(a["weight"], a).to(a["x"].dtype), bias, a["stride"], a["padding"], a["dilation"])


def reference_linear(a):
    bias = None if a["bias"] is None else a["bias"].to(a["x"].dtype)
    return F.linear(a["x"], masked(a["weight"], a).to(a["x"].dtype), bias)


def fixed_scores(*shape):
    """Scores the same on every build (a learned op's thresholds and bits are built from them)."""
    return torch.sin(torch.arange(math.prod(shape), dtype=torch.float32)).reshape(shape)


def reference_learned(a):
    return learned_reference.learned_masked_weights(a["weight"], a["scores"], a["thresholds"], a["dtype"])


def reference_packed(a):
    return (a["weight"] * unpack_masks(a["bits"], a["weight"].shape)).to(a["dtype"] or a["weight"].dtype)


# --- the ops, each with the arguments of one valid call ---

OPS = {
    "mask": dict(
        call=lambda a: ops.mask(a["shape"], a["seed"], a["layer"], a["density"], a["pattern"], nm=a["nm"],
                                device=a["device"], dtype=a["dtype"]),
        reference=lambda a: torch_mask(a["shape"], int(a["seed"]), int(a["layer"]), float(a["density"]), a["pattern"],
                                       a["nm"], dtype=a["dtype"], device=a["device"]),
        args=dict(shape=(4, 8), seed=3, layer=1, density=0.5, pattern="bernoulli", nm=(2, 4), device=None,
                  dtype=torch.float32)),
    "tied_masked_weights": dict(
        call=lambda a: ops.tied_masked_weights(a["weight"], a["layers"], a["seed"], a["density"], a["pattern"],
                                               a["mode"], a["dtype"], nm=a["nm"]),
        reference=lambda a: torch.stack([
            masked(a["weight"], {**a, "layer": 0 if a["mode"] == "same" else int(layer)}) if a["mode"] != "dense"
            else a["weight"] for layer in (range(a["layers"]) if isinstance(a["layers"], int) else a["layers"])
        ]).to(a["dtype"] or a["weight"].dtype),
        args=dict(weight=t(6, 8), layers=3, seed=3, density=0.5, pattern="bernoulli", mode="multi", dtype=None,
                  nm=(2, 4))),
    "masked_conv2d": dict(
        call=lambda a: ops.masked_conv2d(a["x"], a["weight"], a["bias"], a["seed"], a["layer"], a["density"],
                                         a["pattern"], a["stride"], a["padding"], a["dilation"], nm=a["nm"]),
        reference=reference_conv,
        args=dict(x=t(2, 4, 7, 7), weight=t(6, 4, 3, 3), bias=t(6), seed=3, layer=1, density=0.5, pattern="bernoulli",
                  stride=1, padding=1, dilation=1, nm=(2, 4))),
    "learned_mask_thresholds": dict(
        call=lambda a: ops.learned_mask_thresholds(a["scores"], a["kept"]),
        reference=lambda a: learned_reference.thresholds(a["scores"], int(a["kept"])),
        args=dict(scores=Tensor(lambda: fixed_scores(3, 6, 8)), kept=20)),
    "learned_masked_weights": dict(
        call=lambda a: ops.learned_masked_weights(a["weight"], a["scores"], a["thresholds"], a["dtype"]),
        reference=reference_learned,
        args=dict(weight=t(6, 8), scores=Tensor(lambda: fixed_scores(3, 6, 8)),
                  thresholds=Tensor(lambda: learned_reference.thresholds(fixed_scores(3, 6, 8), 20)), dtype=None)),
    "packed_masked_weights": dict(
        call=lambda a: ops.packed_masked_weights(a["weight"], a["bits"], a["dtype"]),
        reference=reference_packed,
        args=dict(weight=t(6, 8), bits=Tensor(lambda: pack_masks(fixed_scores(3, 6, 8) > 0)), dtype=None)),
    "masked_linear": dict(
        call=lambda a: ops.masked_linear(a["x"], a["weight"], a["bias"], a["seed"], a["layer"], a["density"],
                                         a["pattern"], nm=a["nm"]),
        reference=reference_linear,
        args=dict(x=t(5, 8), weight=t(6, 8), bias=t(6), seed=3, layer=1, density=0.5, pattern="bernoulli",
                  nm=(2, 4))),
}


def op_cases(op: str, arg: str, bad=(), valid=(), names=None, **fixed) -> list[Case]:
    """Cases of `op` with `arg` replaced by each value of `bad` (must raise naming `names`, by default the argument)
    and of `valid` (must equal the reference); `fixed` overrides other arguments for all of them.

    Each also runs with the tensor arguments on meta ("[meta]"): the fake kernels, which torch.compile traces with,
    must refuse and accept what the real kernels do. Cases that put a tensor on meta themselves have no such twin."""
    spec = OPS[op]
    pattern = names or word(arg)
    cases = []
    for value, expect in [(v, "error") for v in bad] + [(v, "valid") for v in valid]:
        mixes_devices = any(isinstance(v, Tensor) and v().is_meta for v in (value, *fixed.values()))
        for meta in (False, True) if not mixes_devices else (False,):
            def run(value=value, meta=meta, expect=expect):
                a = build({**spec["args"], **fixed, arg: value}, meta)
                result = spec["call"](a)
                return None if expect == "error" else (result, spec["reference"](a))
            name = f"{op} {arg}={label(value)}{suffix(fixed)}" + (" [meta]" if meta else "")
            cases.append(Case(name, expect, run, pattern if expect == "error" else ""))
    return cases


def label(value) -> str:
    if isinstance(value, Tensor):
        value = value()
    if isinstance(value, torch.Tensor):
        layout = ""
        if 0 in value.stride() and value.numel() > 1:
            layout = ", expanded"
        elif value.dim() == 4 and not value.is_contiguous() and value.is_contiguous(memory_format=torch.channels_last):
            layout = ", channels_last"
        elif not value.is_contiguous():
            layout = ", non-contiguous"
        return f"<{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')} {value.device}{layout}>"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def suffix(fixed: dict) -> str:
    return " (" + ", ".join(f"{k}={label(v)}" for k, v in fixed.items()) + ")" if fixed else ""


INT_TYPES = ["a", 1.5, 2.0, None, [1], 1j, True]
INT_RANGE = [2**63, -2**63 - 1, 2**70]
SEED_BAD = ["a", 1.5, 2.0, None, [1], 1j, True, 2**64, -2**63 - 1, 2**70]
DENSITY_BAD = ["x", None, True, "0.5", float("nan"), float("inf"), -float("inf"), 0.0, -0.5, 1.5, 10**400, 1j, [0.5],
               torch.tensor(0.5)]
PATTERN_BAD = [3, None, b"nm", "random", "", "Exact", ["nm"]]
NM_BAD = [4, (2.5, 4), ("a", 4), (2**70, 4), (1, 2, 3), "24", (5, 4), (0, 4), (2, 65), (2, 0), (2, 3), None]
GEOMETRY_BAD = ["2", 1.5, None, (1, 2, 3), (), (1.0, 1), 2**70, (1, 2**64), True, -1, 2**31, 2**62]


def expanded(*shape):
    return Tensor(lambda: torch.randn([1] * len(shape)).expand(*shape))


def non_contiguous(*shape, dtype=torch.float32):
    """A tensor of `shape` that is a view with permuted strides (its transpose made contiguous, transposed back)."""
    return Tensor(lambda: torch.randn(*reversed(shape), dtype=dtype).permute(*reversed(range(len(shape)))))


def strided(n):
    return Tensor(lambda: torch.randn(2 * n)[::2])


def mask_cases() -> list[Case]:
    return [
        *op_cases("mask", "seed", SEED_BAD, valid=[2**63, 2**64 - 1, -2**63, np.int64(5)]),
        *op_cases("mask", "layer", INT_TYPES + INT_RANGE + [-1], valid=[2**63 - 1, np.int32(4)]),
        *op_cases("mask", "density", DENSITY_BAD, valid=[1, np.float32(0.25), 1e-9]),
        *op_cases("mask", "density", [float("nan"), 0.0], pattern="exact"),
        *op_cases("mask", "pattern", PATTERN_BAD, valid=["exact", "nm"]),
        *op_cases("mask", "nm", NM_BAD, pattern="nm", valid=[(4, 4), [1, 8]]),
        *op_cases("mask", "shape", [(4, 4.0), 16, (4, -1), (8,), (), (2**16, 2**16), None, "44", (2**70, 1)],
                  valid=[(0, 4), torch.Size([3, 5]), (2, 3, 1, 1), (1, 1)]),
        *op_cases("mask", "dtype", [torch.int64, "float32", torch.bool, None, torch.complex64],
                  valid=[torch.float64, torch.bfloat16]),
        *op_cases("mask", "device", ["gpu0", object(), "cpu:x"], valid=["meta", torch.device("cpu")]),
    ]


def tied_cases() -> list[Case]:
    op = "tied_masked_weights"
    return [
        *op_cases(op, "weight", [[[1.0]], None, t(6, 8, dtype=torch.int64), t(6, 8, dtype=torch.bool), t(8), t(),
                                 t(6, 8, dtype=torch.complex64),
                                 Tensor(lambda: torch.randn(1, 1).expand(2**16, 2**16))],
                  valid=[non_contiguous(6, 8), t(0, 8), expanded(6, 8), t(6, 8, dtype=torch.float64),
                         Tensor(lambda: torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last)),
                         t(6, 8, device="meta")]),
        *op_cases(op, "layers", [[0.5], 2.0, "ab", None, [], 0, -1, [2**70], True, 2**70],
                  valid=[range(3), (2, 0), torch.tensor([1, 2])]),
        *op_cases(op, "layers", [[0, -3]], names=r"\blayers?\b"),
        *op_cases(op, "seed", ["a", 1.5, 2**64, None]),
        *op_cases(op, "density", [float("nan"), "x", None, -1]),
        *op_cases(op, "pattern", [3, "random"]),
        *op_cases(op, "mode", [3, None, "tied", ""], valid=["same", "dense"]),
        *op_cases(op, "dtype", ["float16", torch.int32, 3], valid=[torch.bfloat16, torch.float64]),
        *op_cases(op, "nm", [(2.5, 4), (5, 4), (2, 3)], pattern="nm"),
    ]


def conv_cases() -> list[Case]:
    op = "masked_conv2d"
    cases = [
        *op_cases(op, "x", [[[1.0]], None, t(2, 4, 7, 7, dtype=torch.int64), t(4, 7, 7), t(1, 2, 4, 7, 7),
                            t(2, 5, 7, 7), t(2, 4, 7, 7, device="meta"), t(2, 4, 0, 7)],
                  valid=[t(0, 4, 7, 7), Tensor(lambda: torch.randn(2, 4, 7, 7).to(memory_format=torch.channels_last)),
                         Tensor(lambda: torch.randn(2, 4, 7, 9)[..., 1:8]), expanded(2, 4, 7, 7)]),
        *op_cases(op, "x", [t(2, 4, 2, 2)], padding=0, names=r"padded input"),
        *op_cases(op, "weight", [None, t(6, 4, 3, 3, dtype=torch.int32), t(6, 36), t(6, 4, 3, 3, device="meta"),
                                 t(6, 4, 0, 3), t(6, 4)],
                  valid=[non_contiguous(6, 4, 3, 3), t(6, 4, 1, 5)]),
        *op_cases(op, "weight", [t(0, 4, 3, 3)], bias=None),
        *op_cases(op, "weight", [t(6, 0, 3, 3)], x=t(2, 0, 7, 7)),
        *op_cases(op, "bias", [0.0, t(6, dtype=torch.int64), t(5), t(6, 1), t(6, device="meta")],
                  valid=[strided(6), t(6, dtype=torch.float64), None]),
        *op_cases(op, "seed", ["a", 1.5, 2**64]),
        *op_cases(op, "layer", [-1, 1.0]),
        *op_cases(op, "density", [float("nan"), "x"]),
        *op_cases(op, "pattern", [3]),
        *op_cases(op, "nm", [(2, 5)], pattern="nm", valid=[(2, 4)]),
        *op_cases(op, "x", [expanded(2**36, 1, 2**12, 2**12)], weight=t(2**8, 1, 1, 1), bias=None, padding=0,
                  names=r"padding=.*stride=.*dilation="),
        *op_cases(op, "x", [t(2, 4, 7, 7)], weight=t(6, 4, 3, 3, device="meta"), bias=t(6, device="meta"),
                  names=r"\bx\b.*\bweight\b"),
        *op_cases(op, "x", [], valid=[t(2, 4, 7, 7, dtype=torch.float64)]),  # a float32 weight drives float64 x
        # all on meta (fake kernels, torch.compile's tracing): shapes, dtypes and devices as PyTorch's own
        *op_cases(op, "bias", [], x=t(2, 4, 7, 7, device="meta"), weight=t(6, 4, 3, 3, device="meta"),
                  valid=[t(6, device="meta"), None]),
    ]
    for name in ("stride", "padding", "dilation"):
        extra = [0] if name != "padding" else []
        cases += op_cases(op, name, GEOMETRY_BAD + extra, valid=[(2, 1), (0, 2) if name == "padding" else 2])
    return cases


def linear_cases() -> list[Case]:
    op = "masked_linear"
    return [
        *op_cases(op, "x", [[[1.0]], None, t(5, 8, dtype=torch.int64), t(), t(5, 7), t(5, 8, device="meta")],
                  valid=[t(8), t(0, 8), t(2, 3, 8), non_contiguous(5, 8), expanded(5, 8),
                         t(5, 8, dtype=torch.float64)]),
        *op_cases(op, "weight", [t(8), t(6, 8, 1), t(6, 8, dtype=torch.int32), t(6, 8, device="meta"), None, t(6, 7)],
                  valid=[non_contiguous(6, 8)]),
        *op_cases(op, "weight", [], valid=[t(0, 8)], bias=None),
        *op_cases(op, "bias", [], x=t(2, 3, 8, device="meta"), weight=t(6, 8, device="meta"),
                  valid=[t(6, device="meta"), None]),
        *op_cases(op, "weight", [], valid=[t(6, 0)], x=t(5, 0)),
        *op_cases(op, "bias", [t(8), t(6, 1), t(6, device="meta"), t(6, dtype=torch.int64), "b"],
                  valid=[strided(6), None]),
        *op_cases(op, "seed", [2**70, "1"]),
        *op_cases(op, "layer", ["1", -5]),
        *op_cases(op, "density", [-0.5, float("nan")]),
        *op_cases(op, "pattern", [None]),
        *op_cases(op, "nm", [(1, 3), (9, 8)], pattern="nm", valid=[(1, 8)]),
    ]


def learned_cases() -> list[Case]:
    thresholds, learned, packed = "learned_mask_thresholds", "learned_masked_weights", "packed_masked_weights"
    channels_last = Tensor(lambda: torch.randn(6, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    scores_4d = Tensor(lambda: fixed_scores(3, 6, 4, 3, 3))
    thresholds_4d = Tensor(lambda: learned_reference.thresholds(fixed_scores(3, 6, 4, 3, 3), 50))
    bits_4d = Tensor(lambda: pack_masks(fixed_scores(3, 6, 4, 3, 3) > 0.2))
    int64 = dict(dtype=torch.int64)
    return [
        *op_cases(thresholds, "scores", [None, [1.0], t(3, 6, 8, dtype=torch.float64), t(3, 48), t(48),
                                         t(3, 6, 8, dtype=torch.bfloat16)],
                  valid=[non_contiguous(3, 6, 8), t(3, 5, 3, 3)]),
        *op_cases(thresholds, "scores", [], kept=1, valid=[t(1, 1, 1)]),
        *op_cases(thresholds, "scores", [t(0, 6, 8)], kept=0),
        *op_cases(thresholds, "kept", [-1, 49, 1.5, True, None, "3", 2**70, [3]], valid=[0, 48, np.int64(5)]),
        *op_cases(learned, "weight", [[[1.0]], None, t(6, 8, dtype=torch.int64), t(6, 8, dtype=torch.complex64),
                                      t(6, 8, device="meta")],
                  valid=[non_contiguous(6, 8), expanded(6, 8), t(6, 8, dtype=torch.float64),
                         t(6, 8, dtype=torch.bfloat16)]),
        *op_cases(learned, "weight", [t(48)], scores=t(3, 48), names=r"\bweight\b"),
        *op_cases(learned, "weight", [Tensor(lambda: torch.randn(1, 1).expand(2**16, 2**16))],
                  scores=Tensor(lambda: torch.randn(1, 1, 1).expand(3, 2**16, 2**16))),
        *op_cases(learned, "weight", [], scores=scores_4d, thresholds=thresholds_4d, valid=[channels_last]),
        *op_cases(learned, "scores", [None, 1.0, t(3, 6, 8, dtype=torch.float64), t(3, 6, 7), t(6, 8), t(3, 8, 6),
                                      t(3, 6, 8, device="meta"), t(3, 6, 8, dtype=torch.float16)],
                  valid=[non_contiguous(3, 6, 8)]),
        *op_cases(learned, "scores", [t(0, 6, 8)], thresholds=t(0, **int64)),
        *op_cases(learned, "thresholds", [None, 3, t(3), t(3, dtype=torch.int32), t(4, **int64), t(3, 1, **int64),
                                          t(**int64), t(3, device="meta", **int64)],
                  valid=[Tensor(lambda: torch.tensor([2**63 - 1, -2**63, 0]))]),
        *op_cases(learned, "dtype", ["float16", torch.int32, 3, torch.bool], valid=[torch.bfloat16, torch.float64]),
        *op_cases(packed, "weight", [[[1.0]], None, t(6, 8, dtype=torch.int32), t(6, 8, device="meta"), t(48)],
                  valid=[non_contiguous(6, 8), expanded(6, 8), t(6, 8, dtype=torch.float16)]),
        *op_cases(packed, "weight", [], bits=bits_4d, valid=[channels_last]),
        *op_cases(packed, "bits", [None, b"\x00", t(3, 6), t(3, 6, dtype=torch.int8), t(3, 6, dtype=torch.bool),
                                   t(3, 7, dtype=torch.uint8), t(3, 5, dtype=torch.uint8), t(18, dtype=torch.uint8),
                                   t(3, 6, 1, dtype=torch.uint8), t(0, 6, dtype=torch.uint8),
                                   t(3, 6, dtype=torch.uint8, device="meta")],
                  valid=[Tensor(lambda: torch.randint(0, 256, (6, 3), dtype=torch.uint8).t()),
                         Tensor(lambda: torch.full((1, 1), 255, dtype=torch.uint8).expand(3, 6))]),
        *op_cases(packed, "bits", [t(3, 6, dtype=torch.uint8)], weight=t(7, 7), names=r"\bbits\b.*\[L, 7\]"),
        *op_cases(packed, "dtype", [torch.int64, "bfloat16"], valid=[torch.float64]),
    ]


LINEAR_TAIL = (3, 1, 0.5, "bernoulli", 2, 4, [True, True])
CONV_TAIL = (3, 1, 0.5, "bernoulli", 2, 4, [1, 1], [1, 1], [1, 1], [True, True])
TIED_TAIL = ([0, 1], 3, 0.5, "bernoulli", 2, 4, "multi")


def backward_case(name, op, args, names, label_text):
    def run():
        op(*[a() if isinstance(a, Tensor) else a for a in args])
    return Case(f"{name} {label_text}", "error", run, names)


def backward_cases() -> list[Case]:
    linear = torch.ops.wtext.masked_linear_backward
    conv = torch.ops.wtext.masked_conv2d_backward
    tied = torch.ops.wtext.tied_masked_weights_backward
    x, w, g = t(5, 8), t(6, 8), t(5, 6)
    x4, w4, g4 = t(2, 4, 7, 7), t(6, 4, 3, 3), t(2, 6, 7, 7)
    cases = []
    for bad, text in ((t(6, 5), "shape"), (t(5, 6, dtype=torch.int32), "dtype"), (t(5, 6, device="meta"), "device"),
                      (t(30), "flat shape"), (3.0, "type")):
        cases.append(backward_case("masked_linear_backward", linear, (bad, x, w, None, *LINEAR_TAIL), word("grad_out"),
                                   f"grad_out: wrong {text}"))
    for bad, text in ((t(2, 6, 5, 5), "shape"), (t(2, 6, 7, 7, dtype=torch.bool), "dtype"),
                      (t(2, 6, 7, 7, device="meta"), "device"), (t(6, 7, 7), "rank")):
        cases.append(backward_case("masked_conv2d_backward", conv, (bad, x4, w4, None, *CONV_TAIL), word("grad_out"),
                                   f"grad_out: wrong {text}"))
    for bad, text in ((t(6, 4), "shape"), (t(6, 8, dtype=torch.float64), "dtype"), (t(6, 8, device="meta"), "device")):
        cases.append(backward_case("masked_linear_backward", linear, (g, x, w, bad, *LINEAR_TAIL),
                                   word("masked_weight"), f"masked_weight: wrong {text}"))
    for bad, text in ((t(6, 4, 1, 1), "shape"), (t(6, 4, 3, 3, dtype=torch.float16), "dtype"),
                      (t(6, 4, 3, 3, device="meta"), "device")):
        cases.append(backward_case("masked_conv2d_backward", conv, (g4, x4, w4, bad, *CONV_TAIL),
                                   word("masked_weight"), f"masked_weight: wrong {text}"))
    for bad, text in ((t(3, 6, 8), "shape"), (t(2, 6, 8, dtype=torch.int64), "dtype"), (t(2, 6, 8, device="meta"),
                                                                                           "device")):
        cases.append(backward_case("tied_masked_weights_backward", tied, (bad, w, *TIED_TAIL), word("grad"),
                                   f"grad: wrong {text}"))
    cases.append(backward_case("tied_masked_weights_backward", tied, (t(2, 6, 8), t(6, 8, device="meta"), *TIED_TAIL),
                               word("weight"), "weight: wrong device"))
    learned = torch.ops.wtext.learned_masked_weights_backward
    packed = torch.ops.wtext.packed_masked_weights_backward
    scores, thresholds = Tensor(lambda: fixed_scores(3, 6, 8)), t(3, dtype=torch.int64)
    bits = t(3, 6, dtype=torch.uint8)
    for bad, text in ((t(2, 6, 8), "shape"), (t(3, 6, 8, dtype=torch.int64), "dtype"),
                      (t(3, 6, 8, device="meta"), "device"), (t(3, 48), "flat shape")):
        cases.append(backward_case("learned_masked_weights_backward", learned,
                                   (bad, w, scores, thresholds, [True, True]), word("grad"), f"grad: wrong {text}"))
        cases.append(backward_case("packed_masked_weights_backward", packed, (bad, w, bits), word("grad"),
                                   f"grad: wrong {text}"))
    cases.append(backward_case("learned_masked_weights_backward", learned,
                               (t(3, 6, 8), w, t(3, 6, 8, dtype=torch.float64), thresholds, [True, True]),
                               word("scores"), "scores: wrong dtype"))
    cases.append(backward_case("learned_masked_weights_backward", learned,
                               (t(3, 6, 8), w, scores, t(2, dtype=torch.int64), [False, True]),
                               word("thresholds"), "thresholds: wrong shape"))
    cases.append(backward_case("packed_masked_weights_backward", packed, (t(3, 6, 8), w, t(3, 5, dtype=torch.uint8)),
                               word("bits"), "bits: wrong shape"))

    def unbatched_bias_gradient():  # the gradients autograd asks the ops for, against F.linear's
        x, w = torch.randn(8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        got = torch.autograd.grad(ops.masked_linear(x, w, b, 3, 1).square().sum(), b)[0]
        mask = torch_mask((6, 8), 3, 1, 0.5, "bernoulli", dtype=torch.float64)
        return got, torch.autograd.grad(F.linear(x, w * mask, b).square().sum(), b)[0]
    cases.append(Case("masked_linear backward: unbatched x, bias gradient", "valid", unbatched_bias_gradient))
    return cases


ANDERSON_ARGS = dict(x=t(2, 6), fx=t(2, 6), g_history=t(2, 3, 6), f_history=t(2, 3, 6), gram=t(2, 3, 3), step=4,
                     lam=1e-4, beta=0.9)


def anderson_cases() -> list[Case]:
    def call(a):
        return torch.ops.wtext.anderson_step(*a.values())

    bad = {
        "x": [t(2, 6, dtype=torch.float16), t(2, 6, dtype=torch.int64), t(12), t(2, 6, device="meta"), None],
        "fx": [t(2, 5), t(2, 6, dtype=torch.float64), t(2, 6, device="meta")],
        "g_history": [t(2, 3, 5), t(3, 3, 6), t(2, 3, 6, device="meta"),
                      Tensor(lambda: torch.randn(2, 6, 3).transpose(1, 2))],
        "f_history": [t(2, 4, 6), t(2, 3, 6, device="meta"), t(2, 3, 6, dtype=torch.float64)],
        "gram": [t(2, 3, 4), t(2, 3, 3, device="meta"), Tensor(lambda: torch.randn(2, 3, 3).transpose(1, 2))],
        "step": [-1, 2**70, 1.5],
        "lam": [-1.0, float("nan"), float("inf")],
        "beta": [0.0, 1.5, float("nan")],
    }
    cases = []
    for arg, values in bad.items():
        for value in values:
            def run(arg=arg, value=value):
                call(build({**ANDERSON_ARGS, arg: value}))
            cases.append(Case(f"anderson_step {arg}={label(value)}", "error", run, word(arg)))

    def run(**window):
        call(build({**ANDERSON_ARGS, **window}))
    cases.append(Case("anderson_step window m=17", "error",
                      lambda: run(g_history=t(2, 17, 6), f_history=t(2, 17, 6), gram=t(2, 17, 17)),
                      r"\bm\b|g_history"))

    def non_contiguous_x():
        a = build(ANDERSON_ARGS)
        b = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.items()}
        a["x"] = a["x"].t().contiguous().t()  # same values, column-major
        return call(a), call(b)
    cases.append(Case("anderson_step x=<non-contiguous>", "valid", non_contiguous_x))
    return cases


def raw_op_cases() -> list[Case]:
    """The registered ops called directly (torch.ops.wtext.*), past the Python front end's own checks: a bool is not a
    density (the schema's float would have read True as 1.0), in eager and fake (meta) calls alike."""
    cases = []
    for device in ("cpu", "meta"):
        like = t(6, 8, device=device)
        cases.append(Case(f"raw mask density=True [{device}]", "error",
                          lambda like=like: torch.ops.wtext.mask(like(), 3, 0, True, "bernoulli", 2, 4),
                          r"density must be a real number in \(0, 1\], not a bool"))
        cases.append(Case(f"raw tied_masked_weights density=False [{device}]", "error",
                          lambda like=like: torch.ops.wtext.tied_masked_weights(like(), [0, 1], 3, False, "bernoulli",
                                                                                2, 4, "multi"),
                          r"density must be a real number in \(0, 1\], not a bool"))
        cases.append(Case(f"raw tied_masked_weights_backward density=True [{device}]", "error",
                          lambda like=like: torch.ops.wtext.tied_masked_weights_backward(
                              torch.ones(2, 6, 8, device=like().device), like(), [0, 1], 3, True, "bernoulli", 2, 4,
                              "multi"),
                          r"density must be a real number in \(0, 1\], not a bool"))

    x, w, g = t(5, 8), t(6, 8), t(5, 6)
    x4, w4, g4 = t(2, 4, 7, 7), t(6, 4, 3, 3), t(2, 6, 7, 7)
    scores, thresholds = Tensor(lambda: fixed_scores(3, 6, 8)), t(3, dtype=torch.int64)
    backward_ops = {
        "masked_linear_backward": lambda mask, device: torch.ops.wtext.masked_linear_backward(
            g().to(device), x().to(device), w().to(device), None, *LINEAR_TAIL[:-1], mask),
        "masked_conv2d_backward": lambda mask, device: torch.ops.wtext.masked_conv2d_backward(
            g4().to(device), x4().to(device), w4().to(device), None, *CONV_TAIL[:-1], mask),
        "learned_masked_weights_backward": lambda mask, device: torch.ops.wtext.learned_masked_weights_backward(
            t(3, 6, 8)().to(device), w().to(device), scores().to(device), thresholds().to(device), mask),
    }
    for name, call in backward_ops.items():
        for mask in ([True, True, False], [True], []):
            for device in ("cpu", "meta"):
                cases.append(Case(f"raw {name} output_mask={mask} [{device}]", "error",
                                  lambda call=call, mask=mask, device=device: call(mask, device),
                                  rf"{name}: output_mask must hold 2 bools.*got {len(mask)}"))

    def integer_density():  # an int is a real number: 1 keeps every element, as the front end's mask(density=1)
        return torch.ops.wtext.mask(torch.empty(6, 8), 3, 0, 1, "bernoulli", 2, 4), torch.ones(6, 8)
    cases.append(Case("raw mask density=1", "valid", integer_density))
    return cases


def inference_tensor_cases() -> list[Case]:
    """anderson_step updates its histories in place; PyTorch's rule for in-place updates of tensors made under
    torch.inference_mode() (only inside inference mode) holds for it as for PyTorch's own in-place ops."""
    def call(a):
        return torch.ops.wtext.anderson_step(*a.values())

    cases = []
    for arg in ("g_history", "f_history", "gram"):
        def run(arg=arg):
            a = build(ANDERSON_ARGS)
            with torch.inference_mode():
                a[arg] = a[arg].clone()
            call(a)
        cases.append(Case(f"anderson_step {arg}=<made under inference_mode>", "error", run,
                          word(arg) + r".*inference_mode"))

    def inside_inference_mode():  # every tensor an inference tensor, called inside the mode: the normal step
        a = build(ANDERSON_ARGS)
        b = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.items()}
        with torch.inference_mode():
            inference = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.items()}
            got = call(inference)
        return got, call(b)
    cases.append(Case("anderson_step all tensors made and stepped under inference_mode", "valid",
                      inside_inference_mode))
    return cases


def all_cases() -> list[Case]:
    return (mask_cases() + tied_cases() + learned_cases() + conv_cases() + linear_cases() + backward_cases() +
            anderson_cases() + raw_op_cases() + inference_tensor_cases())


# --- classification ---

def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def classify(case: Case) -> tuple[str, str]:
    """(class, detail) of one case, run in this process."""
    try:
        result = case.run()
    except ERRORS as error:
        if case.expect == "valid":
            return "refused", first_line(error)
        named = re.search(case.names, str(error)) is not None
        return ("clear" if named else "unclear"), first_line(error)
    except Exception as error:  # noqa: BLE001  (any other type is what this sweep looks for)
        return "crash", first_line(error)
    if case.expect == "error":
        return "wrong", f"returned {label(result)} instead of raising"
    got, expected = result
    try:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, equal_nan=True)
    except AssertionError as mismatch:
        return "wrong", " ".join(str(mismatch).split())[:200]
    return "correct", ""


def run_child(start: int) -> None:
    """Runs cases from `start` on, one JSON line before and after each, so a parent can tell which one killed us."""
    cases = all_cases()
    for index in range(start, len(cases)):
        print(json.dumps({"start": index}), flush=True)
        torch.manual_seed(index)
        kind, detail = classify(cases[index])
        print(json.dumps({"index": index, "class": kind, "detail": detail}), flush=True)


def sweep() -> tuple[list[Case], dict[int, tuple[str, str]]]:
    """Every case's class, each run in a child process; a child that dies marks its current case a crash and a new
    child goes on from the next one."""
    cases = all_cases()
    results: dict[int, tuple[str, str]] = {}
    start = 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    while start < len(cases):
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(start)], capture_output=True,
                               text=True, env=env, timeout=600)
        current = None
        for line in child.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                current = record["start"]
            else:
                results[record["index"]] = (record["class"], record["detail"])
                current = None
        if current is None:
            if child.returncode != 0:
                raise RuntimeError(f"the fuzz child failed outside any case (rc={child.returncode}):\n{child.stderr}")
            break
        tail = child.stderr.strip().splitlines()[-1:] or [""]
        results[current] = ("crash", f"the process died (rc={child.returncode}): {tail[0][:200]}")
        start = current + 1
    return cases, results


def table(rows) -> str:
    rows = list(rows)
    width = max((len(case.id) for case, _, _ in rows), default=10)
    return "\n".join(f"{kind:8} {case.id:{width}}  {detail}" for case, kind, detail in rows)


def test_every_bad_input_is_a_clear_error_and_every_odd_input_correct():
    cases, results = sweep()
    assert len(results) == len(cases)
    failing = [(case, *results[i]) for i, case in enumerate(cases) if results[i][0] != EXPECTED[case.expect]]
    counts = {kind: sum(1 for k, _ in results.values() if k == kind) for kind in
              ("clear", "unclear", "crash", "wrong", "refused", "correct")}
    assert not failing, (f"{len(failing)} of {len(cases)} cases failed ({counts}):\n" + table(failing))


def test_the_sweep_is_large_and_has_unique_case_ids():
    cases = all_cases()
    assert len(cases) >= 200
    assert len({case.id for case in cases}) == len(cases), [c.id for c in cases if sum(d.id == c.id for d in cases) > 1]


def test_the_classifier_tells_the_classes_apart():
    def raising(error):
        def run():
            raise error
        return run

    assert classify(Case("a", "error", raising(ValueError("seed must be an int; got seed=1.5")), word("seed")))[0] == \
        "clear"
    assert classify(Case("b", "error", raising(RuntimeError("Expected a value of type 'int'")), word("seed")))[0] == \
        "unclear"
    assert classify(Case("c", "error", raising(OverflowError("seed too big")), word("seed")))[0] == "crash"
    assert classify(Case("d", "error", lambda: torch.zeros(2), word("seed")))[0] == "wrong"
    assert classify(Case("e", "valid", lambda: (torch.zeros(2), torch.ones(2))))[0] == "wrong"
    assert classify(Case("f", "valid", lambda: (torch.ones(2), torch.ones(2))))[0] == "correct"
    assert classify(Case("g", "valid", raising(RuntimeError("no"))))[0] == "refused"
    # a word, not a substring: "x" is not named by "expected", "weight" not by "masked_weight"
    assert classify(Case("h", "error", raising(RuntimeError("expected more")), word("x")))[0] == "unclear"
    assert classify(Case("i", "error", raising(RuntimeError("masked_weight is bad")), word("weight")))[0] == "unclear"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        run_child(int(sys.argv[2]))
    else:
        all_results = sweep()
        print(table((case, *all_results[1][i]) for i, case in enumerate(all_results[0])))
        print({kind: sum(1 for k, _ in all_results[1].values() if k == kind)
               for kind in ("clear", "unclear", "crash", "wrong", "refused", "correct")})
