"""Probe statistics: how long the health checks take and how they end, per checker kind.

The monitor (``ulvs.health.monitor``) times every probe it runs and folds the duration and the
outcome into one ``ProbeStats``; it reports the whole table to the daemon (the control command
``probe_stats``), whose status carries it under ``health.probes`` for the Prometheus exporter
(``ulvs_healthcheck_duration_seconds{kind}``, ``ulvs_healthcheck_results_total{kind,result}``).

JSON shape, per kind (``"TCP_CHECK"``, ``"HTTP_GET"``...)::

    {"buckets": [[0.005, 3], [0.01, 7], ...],   # [upper bound in seconds, cumulative count]
     "sum": 0.84, "count": 12, "success": 11, "failure": 1}

``count`` is the +Inf bucket (JSON has no infinity).  A probe shared by several services is one
probe and counts once; a result reused from a recent probe is not a probe and does not count.

Pure: durations are arguments (STYLE rules 1 and 2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (s): Prometheus's default buckets, plus 30 s for slow scripts (MISC_CHECK).
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RESULTS = ("success", "failure")


@dataclass(slots=True)
class KindStats:
    """One kind's histogram (``counts[i]``: probes that took at most ``BUCKETS[i]`` and more than
    the bound before it; ``counts[-1]``: longer than every bound) and outcome counters."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    success: int = 0
    failure: int = 0

    def observe(self, ok: bool, seconds: float) -> None:
        i = 0
        while i < len(BUCKETS) and seconds > BUCKETS[i]:
            i += 1
        self.counts[i] += 1
        self.total += seconds
        if ok:
            self.success += 1
        else:
            self.failure += 1

    def to_json(self) -> dict[str, Any]:
        cumulative, running = [], 0
        for bound, n in zip(BUCKETS, self.counts, strict=False):
            running += n
            cumulative.append([bound, running])
        return {"buckets": cumulative, "sum": self.total, "count": sum(self.counts),
                "success": self.success, "failure": self.failure}


class ProbeStats:
    """Every kind's ``KindStats``; ``changes`` counts observations (the monitor reports the
    table when it moved)."""

    def __init__(self) -> None:
        self.kinds: dict[str, KindStats] = {}
        self.changes = 0

    def observe(self, kind: str, ok: bool, seconds: float) -> None:
        """One probe of checker ``kind`` that took ``seconds`` (a negative or NaN time, from a
        clock that cannot go back, is a bug in the caller)."""
        if not seconds >= 0.0:
            raise ValueError(f"probe duration must be >= 0, not {seconds!r}")
        self.kinds.setdefault(kind, KindStats()).observe(ok, seconds)
        self.changes += 1

    def to_json(self) -> dict[str, Any]:
        return {kind: s.to_json() for kind, s in sorted(self.kinds.items())}


def probes_from_json(value: Any) -> dict[str, Any]:
    """``value`` checked against the JSON shape above (what the daemon accepts from the monitor
    and keeps for its status); raises ``ValueError`` naming the first thing wrong."""
    if not isinstance(value, Mapping):
        raise ValueError("probes must be an object of checker kinds")
    out: dict[str, Any] = {}
    for kind, s in value.items():
        if not isinstance(kind, str) or not isinstance(s, Mapping):
            raise ValueError(f"probes[{kind!r}] must be an object")
        buckets = s.get("buckets")
        if not isinstance(buckets, list):
            raise ValueError(f"probes[{kind!r}].buckets must be a list")
        last_bound, last_count = -math.inf, 0
        for b in buckets:
            if (not isinstance(b, list) or len(b) != 2 or not all(_number(x) for x in b)
                    or not b[0] > last_bound or b[1] < last_count or b[1] != int(b[1])):
                raise ValueError(f"probes[{kind!r}].buckets: {b!r} is not [bound, cumulative count] in order")
            last_bound, last_count = b[0], b[1]
        for name in ("count", "success", "failure"):
            n = s.get(name)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"probes[{kind!r}].{name} must be a count")
        if not _number(s.get("sum")) or s["count"] < last_count:
            raise ValueError(f"probes[{kind!r}]: sum must be a number and count at least the last bucket")
        out[kind] = {"buckets": [[float(b), int(n)] for b, n in buckets], "sum": float(s["sum"]),
                     "count": s["count"], "success": s["success"], "failure": s["failure"]}
    return out


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
