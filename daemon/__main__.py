"""`python -m daemon`: the cryo command line (see `daemon.cli`).

This module only hands over to `daemon.cli.main`; it owns nothing else.
"""

from __future__ import annotations

import sys

from daemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
