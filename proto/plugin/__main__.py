"""`python -m proto.plugin`: protoc-gen-cryo without an installed console script."""

from __future__ import annotations

import sys

from proto.plugin import main

sys.exit(main())
