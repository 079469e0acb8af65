"""Where the optional real data for the tests lives (tests that need it skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("FLOWBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
