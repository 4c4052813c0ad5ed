"""Shared test setup: tests marked ``netns`` need root and are skipped, with a reason, otherwise.

The ``netns`` marker itself is declared in pyproject.toml (STYLE rule 12); this only gates it.
Nothing else is skipped here.
"""

from __future__ import annotations

import os

import pytest

NETNS_SKIP_REASON = "needs root (CAP_NET_ADMIN) to create network namespaces"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason=NETNS_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("netns") is not None:
            item.add_marker(skip)
