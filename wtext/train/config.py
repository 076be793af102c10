"""TrainConfig: every option of `python -m wtext.train`, with the paper's defaults (Adam, lr 1e-3, cosine schedule
with warm-up). The command line is generated from it; a TOML or YAML file can set it; the CLI overrides the file."""

import math
import re
import types
import typing
from dataclasses import dataclass, field, fields

from wtext.data import DATASETS
from wtext.models import DEQ_VARIANTS, PRESETS
from wtext.ops import MODES, PATTERNS
from wtext.validation import check_density, check_nm

OPTIMIZERS = ("adam", "sgd")

# The options that define the network (its weights' shapes and its masks): a checkpoint is evaluated with the
# values it was trained with.
MODEL_OPTIONS = ("model", "width", "depth", "mask_mode", "density", "pattern", "nm", "mask_seed", "deq")

# The data a run trains on: --eval-only takes them from the checkpoint unless given.
DATA_OPTIONS = ("dataset", "data_dir", "synthetic_train", "synthetic_test")

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    # Model
    model: str = option("resnet-tiny", "model preset (python -m wtext.models list)", choices=sorted(PRESETS))
    width: int | None = option(None, "ResNet width: channels of stage 0 (default: the preset's)")
    depth: int | None = option(None, "tied applications of the block (default: the preset's)")
    mask_mode: str = option("multi", "mask mode: multi, same or dense", choices=MODES)
    density: float | None = option(None, "mask density in (0, 1] (default: the preset's: 0.5 ResNet, 0.9 ViT)")
    pattern: str = option("bernoulli", "mask pattern", choices=PATTERNS)
    nm: str = option("2:4", "N:M of the nm pattern")
    mask_seed: int = option(0, "seed of the masks (stored in checkpoints instead of the masks)")
    deq: str | None = option(None, "train the DEQ twin with this variant instead of the weight-tied model",
                             choices=sorted(DEQ_VARIANTS))
    # Data
    dataset: str = option("synthetic", "synthetic (embedded), digits (real 8x8 digits from scikit-learn, "
                                       "upsampled), cifar10 or imagenet32", choices=DATASETS)
    data_dir: str | None = option(None, "folder with the CIFAR-10 / ImageNet32 batch files")
    synthetic_train: int = option(8000, "training images of the synthetic set")
    synthetic_test: int = option(2000, "test images of the synthetic set")
    batch_size: int = option(64, "global batch size (split across data-parallel ranks)")
    augment: bool = option(True, "random crop (pad 4) and horizontal flip (not for digits) on the device")
    # Optimization
    epochs: int = option(6, "training epochs")
    optimizer: str = option("adam", "adam or sgd (with momentum)", choices=OPTIMIZERS)
    lr: float = option(1e-3, "peak learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(0.0, "weight decay")
    warmup_epochs: float = option(0.5, "linear warm-up before the cosine decay, in epochs")
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy")
    grad_clip: float = option(0.0, "clip the gradient norm to this (0: off)")
    # Runtime
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    bf16: bool = option(True, "bfloat16 autocast on CUDA")
    channels_last: bool = option(True, "channels_last activations on CUDA")
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(0, "seed of initialization, data order and augmentation")
    deterministic: bool = option(False, "deterministic algorithms (bitwise-reproducible CPU runs)")
    run_dir: str = option("runs/latest", "where config, metrics, checkpoint and plots go")
    resume: bool = option(False, "continue from run_dir/checkpoint.pt")
    eval_only: bool = option(False, "only evaluate the checkpoint (run_dir/checkpoint.pt or --checkpoint)")
    checkpoint: str | None = option(None, "checkpoint to evaluate with --eval-only")
    checkpoint_every_steps: int = option(0, "also checkpoint every this many steps within an epoch (0: off)")
    checkpoint_every_seconds: float = option(300.0, "also checkpoint when this many seconds passed since the last "
                                                    "checkpoint (0: off); checkpoints are always written at the "
                                                    "start, at every epoch end and on Ctrl-C")
    progress: bool = option(True, "progress bars")
    interleave: int = option(1, "order data as an N-rank data-parallel run would (to reproduce one in one process)")
    stop_after_steps: int = option(0, "stop as if interrupted after this many steps (0: never); for tests")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        self.check_types()
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {f.name}={value!r}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got device={self.device!r}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range
            raise ValueError(f"seed must be in [0, 2^32); got seed={self.seed}")
        if not 0 <= self.mask_seed < 2**63:  # the ops take a signed 64-bit seed
            raise ValueError(f"mask_seed must be in [0, 2^63); got mask_seed={self.mask_seed}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number; got {f.name}={value}")
        positive = ("synthetic_train", "synthetic_test", "batch_size", "epochs", "interleave")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={getattr(self, name)}")
        for name in ("width", "depth"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1; got {name}={value}")
        if self.density is not None:
            check_density(self.density)
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got lr={self.lr}")
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "stop_after_steps", "checkpoint_every_steps",
                     "checkpoint_every_seconds", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {name}={getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1); got label_smoothing={self.label_smoothing}")
        self.nm_pair()

    def check_types(self) -> None:
        """Each field holds its annotated type (a config file can hold anything): bool for bool (not "no"), int
        for int (not 1.5, not True), int or float for float, str for str."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            expected = hints[f.name]
            allowed = typing.get_args(expected) if isinstance(expected, types.UnionType) else (expected,)
            value = getattr(self, f.name)
            if value is None and type(None) in allowed:
                continue
            if isinstance(value, bool):
                ok = bool in allowed
            elif isinstance(value, int):
                ok = int in allowed or float in allowed
            else:
                ok = any(isinstance(value, kind) for kind in allowed if kind is not type(None))
            if not ok:
                names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in allowed)
                raise ValueError(f"{f.name} must be {names}; got {f.name}={value!r} ({type(value).__name__})")
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                try:
                    object.__setattr__(self, f.name, float(value))
                except OverflowError:
                    raise ValueError(f"{f.name} must be a finite number; got {f.name}={value}") from None

    def nm_pair(self) -> tuple[int, int]:
        try:
            n, m = (int(part) for part in self.nm.split(":"))
        except ValueError:
            raise ValueError(f"nm must look like N:M, e.g. 2:4; got nm={self.nm!r}") from None
        check_nm(n, m)
        return n, m
