"""``python -m neurvol``: the command line (see :mod:`neurvol.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
