"""failsight: where, why and how a classifier fails, and fixes for what can be fixed.

Importing the package is cheap and never imports torch; the pillars live in sub-packages:
``failsight.reliability`` (numpy-only), ``failsight.robustness``, ``failsight.defuse``, ``failsight.slices``,
``failsight.study``, ``failsight.report``, ``failsight.models``, ``failsight.datasets``, and
``failsight.audit(...)`` runs them all over one model (see :mod:`failsight.auditing`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "audit"]


def audit(model: Any, test: Any, **kwargs: Any) -> Any:
    """Audit ``model`` on labelled ``test`` data with every pillar the inputs allow; see
    :func:`failsight.auditing.audit` for the arguments. Returns an :class:`~failsight.auditing.AuditResult`
    (``.summary()``, ``.to_html(path)``, ``.to_json(path)``, ``.write(out_dir)``)."""
    from failsight.auditing import audit as _audit

    return _audit(model, test, **kwargs)
