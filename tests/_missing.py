"""One rule for tests that need a system tool (PostgreSQL, Chromium): skip where it is not installed, fail in CI.

``.ci/run`` installs both from Debian before ``make test`` (``CI=true``), so there a missing tool is a broken CI
set-up, not a reason to skip; on a developer's machine without them the test skips and says what to install.
"""

from __future__ import annotations

import os

import pytest


def missing_tool(tool: str, debian_package: str, detail: str) -> None:
    """Skip (or, under ``CI=true``, fail) because ``tool`` is not available; ``detail`` says what was tried."""
    msg = (f"{tool} is not available on this machine ({detail}); install it (Debian: {debian_package}) "
           "to run this test — .ci/run does")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + ", so under CI=true this is an error", pytrace=False)
    pytest.skip(msg)
