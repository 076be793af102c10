"""The training step of the shipped models against the same architecture with its masks stored as buffers.

    python benchmarks/bench_train.py                      # CPU: resnet-tiny, vit-tiny, the resnet-tiny DEQ twin
    python benchmarks/bench_train.py --device cuda        # resnet-small, vit-small (bf16, channels_last), DEQ twin
    python benchmarks/bench_train.py --no-compile --presets resnet-tiny

Every case is the real step of `python -m wtext.train` (Trainer.train_step: forward under the run's autocast,
cross-entropy, backward, Adam, schedule, on-device running sums) on one fixed batch:
- wtext:   the shipped model (masked views from the tied-weight op, F.conv2d / F.linear on them);
- stored:  the same model with each tied weight's masks precomputed once and kept as a buffer, the views made by
           a plain `weight * masks` (what a PyTorch user without wtext would write);
each eager and under torch.compile (the run's --compile), and on CUDA the shipped step captured in a CUDA graph
(--cuda-graph); and the same model with learned masks (--mask-mode learned, eager): "learned ste" (one op makes
the L views from the weight and the scores, top-k per application) and "learned gumbel" (relaxed gates in plain
PyTorch), whose cost is compared with the static multi-mask step ("wtext eager"). Cases are timed in turns, in one
process (timing.py); ratios > 1 mean slower than the stored-mask step.
"""

import argparse
import contextlib
import io
import tempfile

import torch

from timing import add_interleaving_options, interleaved_median_ms
from wtext.nn.tied_weight import TiedMaskedWeight
from wtext.train import TrainConfig
from wtext.train import Trainer

CPU_CASES = (("resnet-tiny", None), ("vit-tiny", None), ("resnet-tiny", "implicit"))
CUDA_CASES = (("resnet-small", None), ("vit-small", None), ("resnet-small", "implicit"))


class StoredMaskWeight(TiedMaskedWeight):
    """A tied weight whose masks are a buffer computed once: forward is weight * masks (then cast)."""

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        stacked = self.weight.unsqueeze(0) * self.stored_masks
        return stacked if dtype is None else stacked.to(dtype)


def store_masks(model: torch.nn.Module) -> None:
    """Turns every tied weight of the model into a StoredMaskWeight (same parameters, same masks)."""
    for module in model.modules():
        if isinstance(module, TiedMaskedWeight):
            masks = module.application_masks()
            module.__class__ = StoredMaskWeight  # same state, one method different: the baseline's masking
            module.register_buffer("stored_masks", masks.to(module.weight.dtype), persistent=False)


def trainer_for(preset: str, deq: str | None, args, case: str, scratch: str) -> Trainer:
    """The trainer of one case: "wtext eager", "stored eager", "wtext compiled", "stored compiled", "wtext graphed"
    (the step captured in a CUDA graph, --cuda-graph)."""
    graphed = case == "wtext graphed"
    learned = dict(mask_mode="learned", mask_learning=case.split()[1]) if case.startswith("learned") else {}
    config = TrainConfig(model=preset, deq=deq, device=args.device, batch_size=args.batch, dataset="synthetic",
                         synthetic_train=args.batch * 2, synthetic_test=args.batch, progress=False,
                         cuda_graph=graphed, run_dir=f"{scratch}/{preset}-{deq}-{case.replace(' ', '-')}",
                         **learned)
    with contextlib.redirect_stdout(io.StringIO()):
        trainer = Trainer(config)
    if case.startswith("stored"):
        store_masks(trainer.core)
    if case.endswith("compiled"):
        trainer.forward = torch.compile(trainer.model)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", help="comma-separated presets (default: the device's set; add :DEQ for a twin, "
                                          "e.g. resnet-tiny:implicit)")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on the CPU, 128 on CUDA")
    parser.add_argument("--no-compile", action="store_true", help="eager cases only")
    parser.add_argument("--no-learned", action="store_true", help="leave out the learned-mask cases")
    add_interleaving_options(parser, warmup=3, repeats=3, rounds=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    args.batch = args.batch or (128 if device.type == "cuda" else 32)
    if args.presets:
        cases = [tuple(item.split(":")) if ":" in item else (item, None) for item in args.presets.split(",")]
    else:
        cases = CUDA_CASES if device.type == "cuda" else CPU_CASES
    names = ["stored eager", "wtext eager"] + ([] if args.no_compile else ["stored compiled", "wtext compiled"])
    print(f"torch {torch.__version__}, {device} ({torch.get_num_threads()} thread(s)), batch {args.batch}, "
          f"{args.rounds} rounds x {args.repeats} steps per case, in turns")
    with tempfile.TemporaryDirectory() as scratch:
        for preset, deq in cases:
            # The CUDA-graph step captures weight-tied models only (a DEQ twin's solve runs host-side loops).
            case_names = names + (["wtext graphed"] if device.type == "cuda" and deq is None else [])
            case_names += [] if args.no_learned else ["learned ste", "learned gumbel"]
            trainers = {name: trainer_for(preset, deq, args, name, scratch) for name in case_names}
            images, labels = next(iter(trainers["wtext eager"].train_loader.epoch(0)))
            steps = {name: (lambda trainer=trainer: trainer.train_step(images, labels))
                     for name, trainer in trainers.items()}
            medians = interleaved_median_ms(steps, device, args.warmup, args.repeats, args.rounds)
            title = preset + (f" (DEQ {deq})" if deq else "")
            print(f"\n{title}:")
            print(f"{'case':<16} | {'ms/step':>8} | {'images/s':>9} | {'vs stored eager':>15} | "
                  f"{'vs stored compiled':>18} | {'vs wtext eager':>14}")
            for name in case_names:
                ms = medians[name]
                versus_compiled = (f"{ms / medians['stored compiled']:17.3f}x" if "stored compiled" in medians
                                   else f"{'-':>18}")
                print(f"{name:<16} | {ms:8.2f} | {args.batch / ms * 1e3:9.0f} | "
                      f"{ms / medians['stored eager']:14.3f}x | {versus_compiled} | "
                      f"{ms / medians['wtext eager']:13.3f}x")


if __name__ == "__main__":
    main()
