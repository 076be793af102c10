"""python -m wtext.train [options]  (see --help)

Exit status: 0 done, 2 a bad option, file or checkpoint (one line on stderr naming it), 3 the training loss became
non-finite (the checkpoint holds the last finite state), 130 interrupted (Ctrl-C; the checkpoint lets --resume
continue).
"""

import sys

from wtext.data import DatasetError

from .cli import resolve_command_line
from .loop import Interrupted, run
from .run_state import NonFiniteLoss


def main(argv=None) -> int:
    config, given = resolve_command_line(argv)
    try:
        run(config, given)
    except (KeyboardInterrupt, Interrupted):
        return 130
    except NonFiniteLoss as error:
        print(f"wtext.train: error: {error}", file=sys.stderr)
        return 3
    except (DatasetError, OSError, ValueError) as error:
        print(f"wtext.train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
