"""Model presets from the command line.

    python -m wtext.models list
    python -m wtext.models describe PRESET [--mask-mode multi|same|dense] [--density D] [--pattern P]
                                          [--width C] [--depth L] [--deq VARIANT] [--image-size S]

`describe` prints stored parameters, effective (unmasked) parameters per application of the tied block, and FLOPs
per image, dense and effective.
"""

import argparse
import dataclasses

from wtext.nn import MaskSpec
from wtext.ops import MODES, PATTERNS

from .accounting import describe
from .presets import DEQ_VARIANTS, list_presets, model_from_config, preset_config


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wtext.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the presets")
    show = commands.add_parser("describe", help="parameters and FLOPs of a preset")
    show.add_argument("preset", help="a name from `list`")
    show.add_argument("--mask-mode", choices=MODES, help="dense, same or multi (default: the preset's)")
    show.add_argument("--density", type=float, help="mask density in (0, 1]")
    show.add_argument("--pattern", choices=PATTERNS, help="mask pattern")
    show.add_argument("--width", type=int, help="ResNet width (stage 0 channels)")
    show.add_argument("--depth", type=int, help="tied applications")
    show.add_argument("--deq", choices=sorted(DEQ_VARIANTS), help="describe the DEQ twin instead")
    show.add_argument("--image-size", type=int, default=32, help="image size for FLOPs (default 32)")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, description in list_presets().items():
            print(f"{name:<14} {description}")
        return
    overrides = {k: v for k, v in (("width", args.width), ("depth", args.depth), ("deq", args.deq)) if v is not None}
    try:
        config = preset_config(args.preset, **overrides)
        mask_changes = {k: v for k, v in (("mode", args.mask_mode), ("density", args.density),
                                          ("pattern", args.pattern)) if v is not None}
        if mask_changes and not hasattr(config, "mask"):
            raise ValueError(f"preset {args.preset!r} has no masks")
        if mask_changes:
            config = dataclasses.replace(config, mask=dataclasses.replace(config.mask, **mask_changes))
        model = model_from_config(config)
    except ValueError as error:
        parser.error(str(error))
    facts = describe(model, args.image_size, args.image_size)
    mask: MaskSpec | None = getattr(config, "mask", None)
    masking = f"mask {mask.mode} / {mask.pattern} / density {mask.density}" if mask else "no masks"
    print(f"{args.preset}: {type(model).__name__}, {masking}" + (f", DEQ twin ({args.deq})" if args.deq else ""))
    print(f"  stored parameters                     {facts['stored']:>14,.0f}")
    print(f"    of which tied (shared, masked)      {facts['tied_stored']:>14,.0f}")
    print(f"  effective parameters per application  {facts['effective_per_application']:>14,.0f}")
    print(f"  FLOPs per {args.image_size}x{args.image_size} image, dense        {facts['flops_dense']:>14,.0f}")
    print(f"  FLOPs per {args.image_size}x{args.image_size} image, effective    {facts['flops_effective']:>14,.0f}")


if __name__ == "__main__":
    main()
