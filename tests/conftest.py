"""Shared test set-up: quiet, isolated Flower, and helpers to run scenarios inline."""

from __future__ import annotations

import os
import shutil
import tempfile

# Before anything imports flwr: no telemetry, no update check, and a private
# FLWR_HOME for this pytest session (removed again when the session ends).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
_FLWR_HOME = tempfile.mkdtemp(prefix="fedsigma-tests-flwr-home-")
os.environ["FLWR_HOME"] = _FLWR_HOME

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_sessionfinish(session, exitstatus):  # noqa: D103
    shutil.rmtree(_FLWR_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def flwr_home() -> Path:
    """The per-session FLWR_HOME every test (and subprocess) sees."""
    return Path(_FLWR_HOME)
