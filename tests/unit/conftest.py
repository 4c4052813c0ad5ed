"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine to completion on plain asyncio and, as the health monitor does, on uvloop."""
    def go(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run(coro) if request.param == "asyncio" else uvloop.run(coro)
    return go
