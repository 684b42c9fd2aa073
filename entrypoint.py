"""Container and GitHub Action entry point: a thin shim over the command line."""

import sys

from integrity.cli import main

if __name__ == "__main__":
    sys.exit(main())
