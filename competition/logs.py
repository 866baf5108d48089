"""The package's log lines on stdout: set up once by each process that prints them (cli, worker)."""
from __future__ import annotations

import logging
import sys


def setup_logging() -> None:
    """Plain INFO lines from the package logger on stdout."""
    # Paddle puts its own handler on the root logger at import, so basicConfig
    # would be a no-op; the package logger gets a plain handler of its own.
    log = logging.getLogger("competition")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
