"""The shipped Grafana dashboard and Prometheus alert rules: promtool accepts the rules, and every metric either
names is one a real appliance exports (GPU metrics: one the NVML collector exports where there is a GPU)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import requests
import yaml

from daemon.metrics.inferd import GpuCollector
from daemon.metrics.triton import GPU_METRIC_NAMES
from testkit.harness import REPO
from tests.fake_nvml import FakeGpu, FakeNvml

pytestmark = pytest.mark.slow

DASHBOARD = REPO / "conf" / "grafana" / "inferd.json"
ALERTS = REPO / "conf" / "prometheus" / "inferd-alerts.yml"
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
}


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, label
    names (in braces or grouping clauses), durations or numbers."""
    text = re.sub(r'"[^"]*"', "", expression)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = found.group()
        after = text[found.end() :].lstrip()
        if word in PROMQL_WORDS or after.startswith("("):
            continue
        names.add(word)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_expressions() -> list[str]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exported_names(text: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def gpu_collector_names() -> set[str]:
    """What the NVML collector exports on a box with a GPU (a stand-in NVML here)."""
    nvml = FakeNvml(
        [FakeGpu(utilization=50, used=1, total=2, temperature=40, power_mw=70_000, uuid="GPU-1234")]
    )
    families = list(GpuCollector(nvml).collect())
    values = {family.name: family.samples[0] for family in families}
    assert values["nv_gpu_utilization"].value == 0.5 and values["nv_gpu_power_usage"].value == 70.0
    assert values["nv_gpu_utilization"].labels == {"gpu_uuid": "GPU-1234"}
    return set(values)


def test_the_metric_extractor_finds_names_and_only_names():
    expression = (
        'histogram_quantile(0.99, sum by (le, shard) (rate(a_bucket{x="y"}[5m]))) > on (i) 0.5 * max(b)'
    )
    assert metric_names(expression) == {"a_bucket", "b"}


def test_promtool_accepts_the_alert_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (./setup.sh test does)")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_every_metric_the_dashboard_and_alerts_use_is_exported(shared_appliance, photo_png):
    # One request of each kind, so that every per-request series exists.
    assert requests.post(f"{shared_appliance.url}/predict", files={"image": photo_png}, timeout=30).ok
    text = requests.get(f"{shared_appliance.url}/metrics", timeout=5).text
    exported = exported_names(text)
    gpu_only = gpu_collector_names()
    assert gpu_only >= set(GPU_METRIC_NAMES) and not gpu_only & exported  # no GPU on this box
    for source, expressions in (("dashboard", dashboard_expressions()), ("alerts", alert_expressions())):
        used = set().union(*(metric_names(e) for e in expressions))
        assert used, source
        unknown = used - exported - gpu_only
        assert not unknown, f"{source} uses metrics the appliance does not export: {sorted(unknown)}"


def test_triton_metric_names_are_exported_with_triton_labels(shared_appliance, photo_png):
    assert requests.post(f"{shared_appliance.url}/predict", files={"image": photo_png}, timeout=30).ok
    assert requests.post(f"{shared_appliance.url}/predict", data=b"", timeout=30).status_code == 400
    text = requests.get(f"{shared_appliance.url}/metrics", timeout=5).text
    labels = '{model="tiny",version="1"}'

    def value(name: str) -> float:
        found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
        assert found, f"{name}{labels} not in /metrics"
        return float(found.group(1))

    assert value("nv_inference_request_success") >= 1 and value("nv_inference_request_failure") >= 1
    assert value("nv_inference_count") >= 1 and value("nv_inference_exec_count") >= 1
    assert value("nv_inference_count") >= value("nv_inference_exec_count")
    assert (
        value("nv_inference_request_duration_us") > 0 and value("nv_inference_compute_infer_duration_us") > 0
    )
    # Every image waits in a queue for some microseconds (claimed by a worker after its enqueue), as part of
    # its request's time: 0 would mean the wait is not recorded at all.
    assert 0 < value("nv_inference_queue_duration_us") < value("nv_inference_request_duration_us")
    assert value("nv_inference_pending_request_count") == 0
