"""What a long task says it is doing: one line to the log and, when the caller asked, to its callback.

Every training step, the scoring snapshot and the bundle export report their progress the same way:
``step = reporter(log, progress)``, then ``step("fitting candidate bgnbd")``. The CLI passes a
callback that updates its progress bar; without one the lines still reach the log at INFO.
"""

from __future__ import annotations

import logging
from collections.abc import Callable


def reporter(logger: logging.Logger, progress: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A ``step(text)`` that logs ``text`` at INFO on ``logger`` and passes it to ``progress`` when given.

    Parameters
    ----------
    logger
        The logger each step's text goes to, at INFO.
    progress
        Called with each step's text as well (the CLI's progress bar); ``None``: the log only.

    Returns
    -------
    Callable[[str], None]
        The ``step`` function to call with the text of each step.
    """

    def step(text: str) -> None:
        logger.info(text)
        if progress is not None:
            progress(text)

    return step
