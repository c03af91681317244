"""Building fleet-dispatch's wheel as pip does, for the tests that look inside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def build_wheel(source: Path, into: Path) -> Path:
    """The wheel `pip wheel --no-deps` builds from the project at `source`, written into `into`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(into), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = into.glob("fleet_dispatch-*.whl")
    return wheel
