"""python -m wtext.train [options]  (see --help)"""

import sys

from wtext.data import DatasetError

from .cli import resolve_config
from .loop import Interrupted, run


def main(argv=None) -> int:
    config = resolve_config(argv)
    try:
        run(config)
    except (KeyboardInterrupt, Interrupted):
        return 130
    except (DatasetError, FileNotFoundError, ValueError) as error:
        print(f"wtext.train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
