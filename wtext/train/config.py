"""TrainConfig: every option of `python -m wtext.train`, with the paper's defaults (Adam, lr 1e-3, cosine schedule
with warm-up). The command line is generated from it; a TOML or YAML file can set it; the CLI overrides the file.

Every option declares its roles (Role) where it is declared; every rule that treats options by kind (what a resumed
run may change, what a fused group must share, what evaluation takes from a checkpoint, what an experiment's command
line overrides) reads them through options_with(), so a new option is classified in one place.
"""

import dataclasses
import enum
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields

from wtext.data import DATASETS
from wtext.lora import DEFAULT_TARGETS, LoRAConfig
from wtext.models import DEQ_VARIANTS, PRESETS
from wtext.nn import MASK_MODES
from wtext.nn.learned_masks import ESTIMATORS, INITS
from wtext.ops import PATTERNS
from wtext.validation import check_density, check_nm

OPTIONS_ROLE_KEY = "role"


class Role(enum.Flag):
    """What an option is, for the rules that treat options by kind. An option without a role (Role.NONE) belongs
    to its run alone: it must not change when the run resumes, and members of a fused group may differ in it."""

    NONE = 0
    MODEL = enum.auto()  # defines the network (weights' shapes, masks, variant): a checkpoint is evaluated with it
    MASK = enum.auto()  # defines the masks, not the weights' shapes: --init-from weights only fit the same masks
    DATA = enum.auto()  # the data trained on: --eval-only takes it from the checkpoint unless it is given
    RESUMABLE = enum.auto()  # may differ between a run and its resumption (any other difference is an error)
    SHARED = enum.auto()  # every member of a fused group has the same value (one network shape, one step count)
    BUDGET = enum.auto()  # an experiment's command-line value wins over the value a run of the experiment sets
    COST_NEUTRAL = enum.auto()  # changes neither the work nor the time of a step: dry-run estimates ignore it


def options_with(role: Role, config_type: type | None = None) -> tuple[str, ...]:
    """The names of config_type's options (TrainConfig's by default) that have `role`, in declaration order."""
    return tuple(f.name for f in fields(config_type or TrainConfig) if role & f.metadata[OPTIONS_ROLE_KEY])


OPTIMIZERS = ("adam", "sgd")

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def option(default, role: Role, help: str, **extra):
    """A TrainConfig field: its default, its roles, and its help text (the command line's)."""
    return field(default=default, metadata={"help": help, OPTIONS_ROLE_KEY: role, **extra})


@dataclass
class TrainConfig:
    # Model
    model: str = option("resnet-tiny", Role.MODEL | Role.SHARED,
                        "model preset (python -m wtext.models list)", choices=sorted(PRESETS))
    width: int | None = option(None, Role.MODEL | Role.SHARED,
                               "ResNet width: channels of stage 0 (default: the preset's)")
    depth: int | None = option(None, Role.MODEL | Role.SHARED,
                               "tied applications of the block (default: the preset's)")
    mask_mode: str = option("multi", Role.MODEL | Role.MASK,
                            "mask mode: multi, same, dense, or learned (a trained mask per application, docs/masks.md)",
                            choices=MASK_MODES)
    density: float | None = option(None, Role.MODEL | Role.MASK,
                                   "mask density in (0, 1] (default: the preset's: 0.5 ResNet, 0.9 ViT)")
    pattern: str = option("bernoulli", Role.MODEL | Role.MASK,
                          "mask pattern", choices=PATTERNS)
    nm: str = option("2:4", Role.MODEL | Role.MASK,
                     "N:M of the nm pattern")
    mask_seed: int = option(0, Role.MODEL | Role.MASK | Role.COST_NEUTRAL,
                            "seed of the masks (stored in checkpoints instead of the masks)")
    mask_overlap: float = option(0.0, Role.MODEL | Role.MASK,
                                 "fraction of each application's mask carried over from the previous one "
                                 "(multi-mask, bernoulli): 0 independent masks, 1 the same mask everywhere")
    # Learned masks (--mask-mode learned). The scores are in the checkpoint, so none of these defines the network an
    # evaluation rebuilds; they shape how the masks train.
    mask_learning: str = option("ste", Role.NONE,
                                "how learned masks train: ste (straight-through top-k, edge-popup) or gumbel "
                                "(hard-concrete relaxation with a temperature schedule and a density penalty)",
                                choices=ESTIMATORS)
    mask_init: str = option("seed", Role.NONE,
                            "where learned masks start: seed (the --mask-seed multi-masks, so step 0 is the static "
                            "multi-mask model) or random", choices=INITS)
    mask_lr: float | None = option(None, Role.NONE,
                                   "peak learning rate of the mask scores (default: 10 x --lr); same schedule")
    mask_weight_decay: float = option(0.0, Role.NONE,
                                      "weight decay of the mask scores")
    mask_temperature: float = option(2 / 3, Role.NONE,
                                     "gumbel: the relaxation's temperature at the start of training")
    mask_final_temperature: float = option(0.1, Role.NONE,
                                           "gumbel: the temperature at the end (geometric schedule)")
    mask_density_penalty: float = option(1.0, Role.NONE,
                                         "gumbel: weight of the penalty (expected density - density)^2 per "
                                         "application")
    freeze_masks: bool = option(False, Role.RESUMABLE,
                                "at the end of training, freeze the learned masks into bits in the checkpoint "
                                "(as python -m wtext.masks freeze)")
    deq: str | None = option(None, Role.MODEL,
                             "train the DEQ twin with this variant instead of the weight-tied model",
                             choices=sorted(DEQ_VARIANTS))
    # Resumable: it changes how long a solve runs, not the model or its result.
    deq_check_every: int = option(0, Role.RESUMABLE,
                                  "test DEQ convergence every k solver iterations (one host read per k) and stop "
                                  "when every sample converged; 0: run the whole budget, no host read (sets the DEQ "
                                  "variant's f_check_every and b_check_every)")
    # Transfer: start from another run's weights, fine-tune all of them, some modules, or LoRA adapters
    # (docs/lora.md). init_from and train_only do not define the network: the run's own checkpoint holds the weights,
    # and which of them trained does not change what they compute.
    init_from: str | None = option(None, Role.COST_NEUTRAL,
                                   "initialize the model with the weights of this wtext checkpoint (e.g. another "
                                   "run's run_dir/checkpoint.pt) before training; a classifier head of another "
                                   "number of classes is left freshly initialized; not re-applied on --resume")
    lora: str | None = option(None, Role.MODEL,
                              "train multi-mask LoRA adapters instead of the base weights (frozen), e.g. "
                              "r=8,alpha=16,copies=2,density=0.5 (keys of wtext.lora.LoRAConfig.parse; the adapters' "
                              "masks follow --mask-seed unless it sets seed=)")
    lora_targets: str | None = option(None, Role.MODEL,
                                      "comma-separated module-name patterns the LoRA adapters target (default: the "
                                      "tied weights, cells.*.conv1 ... block.fc2)")
    train_only: str | None = option(None, Role.NONE,
                                    "comma-separated module-name patterns: train only these modules and freeze the "
                                    "rest (e.g. head); with --lora, the modules trained besides the adapters")
    # Data
    dataset: str = option("synthetic", Role.DATA | Role.SHARED,
                          "synthetic (embedded), digits (real 8x8 digits from scikit-learn, upsampled), cifar10 or "
                          "imagenet32", choices=DATASETS)
    data_dir: str | None = option(None, Role.DATA | Role.SHARED | Role.BUDGET,
                                  "folder with the CIFAR-10 / ImageNet32 batch files")
    synthetic_train: int = option(8000, Role.DATA | Role.SHARED | Role.BUDGET,
                                  "training images of the synthetic set")
    synthetic_test: int = option(2000, Role.DATA | Role.SHARED | Role.BUDGET,
                                 "test images of the synthetic set")
    batch_size: int = option(64, Role.SHARED | Role.BUDGET,
                             "global batch size (split across data-parallel ranks)")
    augment: str = option("auto", Role.NONE,
                          "augmentation of training images, on the device: crop (random crop, pad 4), flip "
                          "(horizontal), crop,flip, none, or auto: crop,flip except crop alone on digits; true/false "
                          "in older config files mean auto/none")
    # Optimization
    epochs: int = option(6, Role.RESUMABLE | Role.SHARED | Role.BUDGET,
                         "training epochs")
    optimizer: str = option("adam", Role.NONE,
                            "adam or sgd (with momentum)", choices=OPTIMIZERS)
    lr: float = option(1e-3, Role.NONE,
                       "peak learning rate")
    momentum: float = option(0.9, Role.NONE,
                             "SGD momentum")
    weight_decay: float = option(0.0, Role.NONE,
                                 "weight decay")
    warmup_epochs: float = option(0.5, Role.NONE,
                                  "linear warm-up before the cosine decay, in epochs")
    label_smoothing: float = option(0.0, Role.NONE,
                                    "label smoothing of the cross-entropy")
    grad_clip: float = option(0.0, Role.NONE,
                              "clip the gradient norm to this (0: off)")
    # Runtime
    device: str = option("auto", Role.RESUMABLE | Role.SHARED | Role.BUDGET,
                         "auto, cpu, cuda or cuda:N")
    bf16: bool = option(True, Role.SHARED,
                        "bfloat16 autocast on CUDA")
    channels_last: bool = option(True, Role.SHARED,
                                 "channels_last activations on CUDA")
    compile: bool = option(False, Role.NONE,
                           "torch.compile the model")
    cuda_graph: bool = option(False, Role.RESUMABLE,
                              "capture the training step (forward, backward, Adam) in one CUDA graph and replay it "
                              "(CUDA, weight-tied models, Adam, one process)")
    seed: int = option(0, Role.COST_NEUTRAL,
                       "seed of initialization, data order and augmentation")
    deterministic: bool = option(False, Role.SHARED,
                                 "deterministic algorithms (bitwise-reproducible CPU runs)")
    run_dir: str = option("runs/latest", Role.RESUMABLE | Role.COST_NEUTRAL,
                          "where config, metrics, checkpoint and plots go")
    resume: bool = option(False, Role.RESUMABLE | Role.COST_NEUTRAL,
                          "continue from run_dir/checkpoint.pt")
    eval_only: bool = option(False, Role.RESUMABLE,
                             "only evaluate the checkpoint (run_dir/checkpoint.pt or --checkpoint)")
    checkpoint: str | None = option(None, Role.RESUMABLE,
                                    "checkpoint to evaluate with --eval-only")
    checkpoint_every_steps: int = option(0, Role.RESUMABLE,
                                         "also checkpoint every this many steps within an epoch (0: off)")
    checkpoint_every_seconds: float = option(300.0, Role.RESUMABLE,
                                             "also checkpoint when this many seconds passed since the last "
                                             "checkpoint (0: off); checkpoints are always written at the start, at "
                                             "every epoch end and on Ctrl-C")
    progress: bool = option(True, Role.RESUMABLE | Role.COST_NEUTRAL,
                            "progress bars")
    tensorboard: bool = option(False, Role.RESUMABLE | Role.COST_NEUTRAL,
                               "write the run's scalars (loss, accuracy, learning rate, images/s, DEQ solver steps "
                               "and residuals; every few steps and every epoch) as TensorBoard event files in "
                               "RUN_DIR/tensorboard (needs the tensorboard package)")
    interleave: int = option(1, Role.NONE,
                             "order data as an N-rank data-parallel run would (to reproduce one in one process)")
    stop_after_steps: int = option(0, Role.RESUMABLE | Role.SHARED,
                                   "stop as if interrupted after this many steps (0: never); for tests")

    def __post_init__(self):
        self.augment = upgrade_saved_options({"augment": self.augment})["augment"]  # older config files
        self.validate()

    def validate(self) -> None:
        self.check_types()
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {f.name}={value!r}")
        self.augment = canonical_augment(self.augment)
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
        if not 0 <= self.mask_overlap <= 1:
            raise ValueError(f"mask_overlap must be in [0, 1]; got mask_overlap={self.mask_overlap}")
        if self.mask_overlap > 0 and (self.mask_mode != "multi" or self.pattern != "bernoulli"):
            raise ValueError(f"mask_overlap > 0 needs mask_mode multi and pattern bernoulli; got mask_mode="
                             f"{self.mask_mode}, pattern={self.pattern}")
        self.check_learned_masks()
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got lr={self.lr}")
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "stop_after_steps", "checkpoint_every_steps",
                     "checkpoint_every_seconds", "momentum", "deq_check_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {name}={getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1); got label_smoothing={self.label_smoothing}")
        # Set without --deq it would do nothing, silently: a run meant to be timed with early ends would be timed
        # without them. (--eval-only takes --deq from the checkpoint later; model_for checks it there.)
        if self.deq_check_every and self.deq is None and not self.eval_only:
            raise ValueError(f"deq_check_every applies to DEQ twins only; got deq_check_every={self.deq_check_every} "
                             f"without --deq (add --deq VARIANT or drop --deq-check-every)")
        self.nm_pair()
        self.lora_config()
        self.train_only_patterns()
        if self.lora_targets is not None and self.lora is None:
            raise ValueError(f"lora_targets applies to LoRA runs only; got lora_targets={self.lora_targets!r} "
                             f"without --lora")
        if self.init_from is not None and not self.init_from.strip():
            raise ValueError("init_from must name a checkpoint file; got an empty string")

    def check_learned_masks(self) -> None:
        """The learned-mask options: their ranges, and none of them set without --mask-mode learned (it would
        silently do nothing)."""
        for name in ("mask_temperature", "mask_final_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {name}={getattr(self, name)}")
        for name in ("mask_weight_decay", "mask_density_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {name}={getattr(self, name)}")
        if self.mask_lr is not None and not self.mask_lr > 0:
            raise ValueError(f"mask_lr must be > 0; got mask_lr={self.mask_lr}")
        if self.mask_mode == "learned":
            if self.pattern == "nm":
                raise ValueError("mask_mode learned keeps the top round(density * numel) scores of a weight, not N "
                                 "of every M: use --pattern exact with it, not nm")
            return
        defaults = {f.name: f.default for f in fields(self)}
        changed = [name for name in ("mask_learning", "mask_init", "mask_lr", "mask_weight_decay",
                                     "mask_temperature", "mask_final_temperature", "mask_density_penalty",
                                     "freeze_masks") if getattr(self, name) != defaults[name]]
        if changed:
            raise ValueError(f"{changed[0]} applies to learned masks only; got {changed[0]}="
                             f"{getattr(self, changed[0])!r} with mask_mode={self.mask_mode} (add --mask-mode learned "
                             f"or drop --{changed[0].replace('_', '-')})")

    def augmentation(self, dataset_flips: bool) -> tuple[bool, bool]:
        """(crop, flip) of training images; auto flips only data sets whose images mirror well (dataset_flips:
        not digits), an explicit flip is obeyed on any data set."""
        if self.augment == "auto":
            return True, dataset_flips
        parts = self.augment.split(",")
        return "crop" in parts, "flip" in parts

    def learned_mask_lr(self) -> float:
        return 10 * self.lr if self.mask_lr is None else self.mask_lr

    def lora_config(self) -> LoRAConfig | None:
        """The wtext.lora.LoRAConfig of --lora, with --lora-targets and --train-only applied; None without --lora.
        Errors name the option."""
        if self.lora is None:
            return None
        try:
            config = LoRAConfig.parse(self.lora)
        except (TypeError, ValueError) as error:
            raise ValueError(f"lora: {error}") from None
        # The adapters' masks follow the run's mask seed (as the sweeps' seeds do) unless the string sets its own.
        given = {item.partition("=")[0].strip() for item in self.lora.split(",")}
        updates = {} if "seed" in given else {"seed": self.mask_seed}
        targets = _pattern_list(self.lora_targets, "lora_targets")
        if targets is not None:
            if config.targets != DEFAULT_TARGETS:
                raise ValueError(f"lora sets targets and lora_targets is given too; set them once (lora="
                                 f"{self.lora!r}, lora_targets={self.lora_targets!r})")
            updates["targets"] = targets
        train = self.train_only_patterns()
        if train is not None:
            if config.train_modules:
                raise ValueError(f"lora sets train_modules and train_only is given too; set them once (lora="
                                 f"{self.lora!r}, train_only={self.train_only!r})")
            updates["train_modules"] = train
        if not updates:
            return config
        try:
            return dataclasses.replace(config, **updates)
        except (TypeError, ValueError) as error:
            raise ValueError(f"lora: {error}") from None

    def train_only_patterns(self) -> tuple[str, ...] | None:
        return _pattern_list(self.train_only, "train_only")

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


AUGMENT_PARTS = ("crop", "flip")


def upgrade_saved_options(saved: dict) -> dict:
    """A run's saved options (config.json, a checkpoint's config) in today's spelling: augment was a bool before it
    named its parts (true meant auto)."""
    if isinstance(saved.get("augment"), bool):  # not 0 or 1: those stay errors of type
        saved = {**saved, "augment": "auto" if saved["augment"] else "none"}
    return saved


def canonical_augment(text: str) -> str:
    """augment in one spelling: auto, none, or its parts in AUGMENT_PARTS order ("flip, crop" -> "crop,flip"), so
    that equal choices compare equal when a run resumes or a fused group is formed."""
    if text in ("auto", "none"):
        return text
    parts = [part.strip() for part in text.split(",")]
    unknown = [part for part in parts if part not in AUGMENT_PARTS]
    if unknown or not parts:
        raise ValueError(f"augment must be auto, none, or a comma-separated list of {' and '.join(AUGMENT_PARTS)}; "
                         f"got augment={text!r}")
    return ",".join(part for part in AUGMENT_PARTS if part in parts)


def _pattern_list(text: str | None, name: str) -> tuple[str, ...] | None:
    """The comma-separated module-name patterns of an option (None when not set); an empty list is an error."""
    if text is None:
        return None
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    if not patterns:
        raise ValueError(f"{name} must hold at least one module-name pattern; got {name}={text!r}")
    return patterns
