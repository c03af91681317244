"""The one way tests wait: poll a check until it holds, or fail the test saying what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 20.0, what: str = "", interval: float = 0.05) -> T:
    """The first truthy result of `check()`, polled every `interval` seconds; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {what or check}")
        time.sleep(interval)
