"""failsight: where, why and how a classifier fails, and fixes for what can be fixed.

Importing the package is cheap and never imports torch; the pillars live in sub-packages:
``failsight.reliability`` (numpy-only), ``failsight.report``, ``failsight.models`` (torch), ...
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
