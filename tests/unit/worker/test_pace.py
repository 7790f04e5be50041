"""A shard's pace: the overdue and wedge limits it derives from its own recent batches."""

from __future__ import annotations

import pytest

from daemon.worker.pace import (
    OVERDUE_FLOOR_S,
    RECENT_BATCHES,
    STUCK_FLOOR_S,
    UNTIMED_STUCK_AFTER_S,
    BatchPace,
)


def test_a_fast_model_is_taken_for_wedged_after_the_floor_not_ten_seconds():
    pace = BatchPace()
    for _ in range(10):
        pace.record(4, 0.020)
    assert pace.stuck_after_s(4) == STUCK_FLOOR_S
    assert pace.overdue_after_s(4) == pytest.approx(max(OVERDUE_FLOOR_S, 3 * 0.020))


def test_nothing_timed_yet_keeps_the_old_ten_seconds():
    assert BatchPace().stuck_after_s(32) == UNTIMED_STUCK_AFTER_S


def test_a_bigger_batch_than_any_recent_one_is_expected_to_take_longer_per_job():
    pace = BatchPace()
    pace.record(1, 0.2)  # a CPU model: single images at 200 ms
    assert pace.expected_s(32) == pytest.approx(6.4)
    assert pace.stuck_after_s(32) == pytest.approx(64.0)


def test_an_even_slowdown_moves_the_limits_with_it_and_stays_below_them():
    pace = BatchPace()
    for _ in range(RECENT_BATCHES):
        pace.record(8, 0.2)
    for _ in range(RECENT_BATCHES):
        # Every batch three times slower: each stays far inside the limit the batches before it set.
        assert pace.stuck_after_s(8) > 3 * 0.6
        pace.record(8, 0.6)
    assert pace.expected_s(8) == pytest.approx(0.6)  # the old pace has left the window


def test_a_configured_limit_wins_and_a_swap_forgets_the_old_model():
    assert BatchPace(stuck_after_s=4.0).stuck_after_s(1) == 4.0
    pace = BatchPace()
    pace.record(1, 0.01)
    pace.forget()
    assert not pace.timed and pace.stuck_after_s(1) == UNTIMED_STUCK_AFTER_S


def test_the_overdue_rule_is_the_limit_the_claim_script_computes():
    pace = BatchPace()
    pace.record(2, 0.1)
    pace.record(8, 0.2)
    rule = pace.overdue_rule()
    for jobs in (1, 4, 16):
        script_ms = max(rule.floor_ms, rule.per_job_ms * jobs)
        assert script_ms == pytest.approx(pace.overdue_after_s(jobs) * 1000, abs=1)
