"""``python -m alphaflow_server``: the ``alphaflow-live`` command, without its console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
