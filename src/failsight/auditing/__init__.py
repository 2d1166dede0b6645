"""Audit one model over every pillar: ``failsight.audit(model, test=..., ...)`` → :class:`AuditResult`.

Importing this package never imports torch; the steps import what they need when they run.
"""

from failsight.auditing.core import AUDIT_STEPS, AuditResult, Finding, StepStatus, audit

__all__ = ["AUDIT_STEPS", "AuditResult", "Finding", "StepStatus", "audit"]
