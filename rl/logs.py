"""Where the project's log messages go: a run's RUN_DIR/log.txt, and the console of `python -m rl`.

Modules log through `logging.getLogger(__name__)`; the loggers of the three layers collect them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOGGERS = ("rl", "envs", "rewards")


def attach(handler: logging.Handler) -> logging.Handler:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if handler not in logger.handlers:
            logger.addHandler(handler)
    return handler


def detach(handler: logging.Handler) -> None:
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def to_file(path: str | Path) -> logging.Handler:
    """Append what the project logs to `path`, with time, level and source."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return attach(handler)


_console: logging.Handler | None = None


def to_console() -> None:
    """Messages on stderr as plain lines, once per process however often the CLI runs in it."""
    global _console
    if _console is None:
        _console = logging.StreamHandler(sys.stderr)
        _console.setFormatter(logging.Formatter("%(message)s"))
    attach(_console)


LIBRARIES = ("vllm", "ray", "transformers", "torch", "urllib3", "filelock")


def quiet_libraries(level: str) -> None:
    """The libraries' own logs at WARNING and above unless `log_level=debug`; vLLM reads its level from the
    environment, which Ray actors and spawned processes inherit, so it is set there before vLLM is imported."""
    if level == "debug":
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
