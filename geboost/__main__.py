"""``python -m geboost``: the ``geboost`` command."""

import sys

from geboost.cli import main

if __name__ == "__main__":
    sys.exit(main())
