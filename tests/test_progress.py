"""The one progress helper: every long task's lines reach the log, and the caller's callback when given."""

from __future__ import annotations

import logging

import pytest

from training.progress import reporter

pytestmark = pytest.mark.unit


def test_a_step_is_logged_and_passed_to_the_callback(caplog):
    logger = logging.getLogger("rapport.test.progress")
    seen: list[str] = []
    step = reporter(logger, seen.append)
    with caplog.at_level(logging.INFO, logger=logger.name):
        step("fitting candidate bgnbd")
        step("logging the run to MLflow")
    assert seen == ["fitting candidate bgnbd", "logging the run to MLflow"]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (logger.name, logging.INFO, "fitting candidate bgnbd"), (logger.name, logging.INFO, "logging the run to MLflow")]


def test_without_a_callback_a_step_is_only_logged(caplog):
    logger = logging.getLogger("rapport.test.progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        reporter(logger)("scoring snapshot as of 2024-06-30")
    assert [r.getMessage() for r in caplog.records] == ["scoring snapshot as of 2024-06-30"]
