"""``python -m smoothguard`` (also the entry point that torchrun uses)."""

import sys

from smoothguard.cli import main

if __name__ == "__main__":
    sys.exit(main())
