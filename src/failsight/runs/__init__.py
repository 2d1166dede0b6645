"""failsight.runs: run history. Every audit is recorded (model and data identity, config, metrics and
optionally the per-sample predictions) in a SQLite file or any SQLAlchemy database (PostgreSQL), so two
runs can be compared per metric and per slice::

    from failsight.runs import RunStore

    with RunStore("failsight-runs.db") as store:
        store.record(model_id=h, model_name="cnn", data_id=d, data_name="digits-test", config={},
                     metrics={"reliability.accuracy": 0.97, "reliability.ece": 0.02},
                     predictions={"y": y, "pred": pred, "groups": {"colour": colour}})
        cmp = store.compare("baseline", "cnn-2025")
        print("\\n".join(cmp.summary()))

The CLI lives in :mod:`failsight.runs.cli` (``failsight runs list`` / ``failsight runs compare A B``).
"""

from failsight.runs.store import (
    MetricRow,
    RunComparison,
    RunRecord,
    RunStore,
    RunStoreError,
    metric_direction,
)

__all__ = ["MetricRow", "RunComparison", "RunRecord", "RunStore", "RunStoreError", "metric_direction"]
