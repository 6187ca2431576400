"""Runners shared by several claims.

``published_values``: the full-scale setups (GPT-2 / Pythia from the hub, on a GPU). It runs
each experiment of the claim once and compares every reference row that names a ``metric`` (a
dotted path into the run record) with the published ``value`` within the row's ``tolerance``
(``atol`` and/or ``rtol``).
"""

from __future__ import annotations

from typing import Any

from rlhf_bench.repro.session import Check, Outcome, Session, within


def record_value(record: dict[str, Any], dotted: str) -> Any:
    """``record`` at the dotted path ``a.b.c``; None where a key is missing."""
    node: Any = record
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def published_values(session: Session) -> Outcome:
    claim = session.claim
    records = {experiment: session.run(experiment=experiment) for experiment in claim.experiments}
    checks = []
    for row in claim.reference_rows:
        if "metric" not in row or "value" not in row:
            continue  # a row that documents a number with no counterpart in the record
        experiment = row.get("experiment", claim.experiments[0])
        measured = record_value(records[experiment], row["metric"])
        tolerance = row.get("tolerance") or {}
        atol, rtol = float(tolerance.get("atol", 0.0)), float(tolerance.get("rtol", 0.0))
        passed = measured is not None and within(float(measured), float(row["value"]), atol, rtol)
        checks.append(
            Check(
                name=f"{row.get('setup', experiment)}: {row['metric']}",
                measured=measured if measured is not None else "missing from the record",
                published=row["value"],
                passed=passed,
                detail=f"|measured - published| <= {atol} + {rtol} x |published|; {row.get('source', '')}".strip(),
            )
        )
    return Outcome(checks, data={"runs": {e: r["run_id"] for e, r in records.items()}})
