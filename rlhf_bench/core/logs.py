"""Library chatter into the run's log file, so that the terminal shows our progress bars and tables.

lm-eval (and the transformers and datasets calls under it) log at INFO and draw their own tqdm
bars ("Building contexts for rb_probe on rank 0...", "Running loglikelihood requests"): useful in
a log, noise on a terminal where each stage already has one bar.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

CHATTY = ("lm_eval", "lm-eval", "transformers", "datasets", "evaluate", "accelerate", "huggingface_hub")


@contextlib.contextmanager
def to_log_file(path: Path | None, loggers: tuple[str, ...] = CHATTY) -> Iterator[None]:
    """Within the block: ``loggers`` write to ``path`` (appended) instead of the terminal, and so does
    anything written to ``sys.stderr`` (the libraries' tqdm bars). ``path`` None: nothing changes."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        saved = []
        for name in loggers:
            logger = logging.getLogger(name)
            saved.append((logger, logger.handlers[:], logger.propagate))
            logger.handlers, logger.propagate = [handler], False
        try:
            with contextlib.redirect_stderr(stream):
                yield
        finally:
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate
            sys.stderr.flush()
