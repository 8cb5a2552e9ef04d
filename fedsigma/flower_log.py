"""Flower's own log lines go to the run's ``flower.log``, not between the progress bar's lines.

The inline engine runs the ServerApp and ClientApps in this process, so Flower's
logger (``flwr``, INFO lines such as the strategy's settings) would print to the
terminal the progress bar is drawing on. The other engines already write their
processes' output to ``flower.log``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from flwr.common.logger import console_handler


@contextlib.contextmanager
def flower_log_to(path: Path, verbose: bool = False):
    """Within the block, append Flower's log records to ``path``; the terminal shows them
    too only when ``verbose``."""
    logger = logging.getLogger("flwr")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    quiet = not verbose and console_handler in logger.handlers
    if quiet:
        logger.removeHandler(console_handler)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        if quiet:
            logger.addHandler(console_handler)
