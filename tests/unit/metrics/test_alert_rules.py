"""The shipped alert rules fire when they should and stay quiet when they should not: `promtool test rules` on
conf/prometheus/inferd-alerts.test.yml, which has a firing and a quiet case for every alert."""

from __future__ import annotations

import subprocess

import yaml

from testkit.harness import REPO
from tests.needs import need_program

RULES = REPO / "conf" / "prometheus" / "inferd-alerts.yml"
RULE_TESTS = REPO / "conf" / "prometheus" / "inferd-alerts.test.yml"


def test_every_alert_has_a_firing_case_beside_a_quiet_one():
    alerts = {
        rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    }
    fired: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        series = [entry["series"] for entry in case["input_series"]]
        for check in case["alert_rule_test"]:
            expected = check["exp_alerts"]
            if expected:
                fired.add(check["alertname"])
                # The quiet case: a series the expected alerts do not cover, in the same evaluation.
                assert len(expected) < len({s.split("{")[1] for s in series}), case["name"]
    assert fired == alerts


def test_promtool_runs_the_rule_tests():
    promtool = need_program("promtool", "Debian's prometheus package")
    result = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
