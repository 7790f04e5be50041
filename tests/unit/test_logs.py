"""The log level every inferd process takes from INFERD_LOG_LEVEL."""

from __future__ import annotations

import logging

from daemon.logs import log_level


def test_the_level_comes_from_the_environment_in_any_case_and_defaults_to_info():
    assert log_level({}) == logging.INFO
    assert log_level({"INFERD_LOG_LEVEL": " debug "}) == logging.DEBUG
    assert log_level({"INFERD_LOG_LEVEL": "WARNING"}) == logging.WARNING
    assert log_level({"INFERD_LOG_LEVEL": "chatty"}) is None  # setup_logging warns and uses INFO
