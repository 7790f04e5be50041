"""gpu_status without Redis: rates, the table and exit codes (NVML readings: tests/unit/ops/test_nvml.py)."""

from __future__ import annotations

import dataclasses
import time

import jsonschema

from daemon.errors import EXIT_OK, EXIT_SHARD_DOWN
from daemon.http.openapi import openapi_document
from daemon.ops.nvml import GpuReading
from daemon.ops.shard_status import ShardStatus, shards_json
from daemon.queue.registry import batch_rates
from daemon.queue.wire import DOWN, LIVE, SHARD_STATUSES, BatchRecord
from daemon.settings import Settings
from tests.fake_nvml import GIB
from tools.gpu_status import exit_code, render_status_table


def records(*batches: tuple[float, int]) -> tuple[BatchRecord, ...]:
    return tuple(BatchRecord(finished_at=t, size=n) for t, n in batches)


def test_batch_rates_count_only_the_last_minute():
    now = time.time()
    # Newest first, as the worker pushes them; the 90 s old batch is outside the window.
    rate, mean = batch_rates(records((now - 1, 30), (now - 20, 10), (now - 59, 20), (now - 90, 32)), now)
    assert rate == 60 / 60.0
    assert mean == 20.0
    assert batch_rates(records((now - 90, 32)), now) == (0.0, None)
    assert batch_rates((), now) == (0.0, None)


def test_batch_rates_over_a_trimmed_list_use_the_span_it_covers():
    now = time.time()
    # 120 records (the worker's cap) all within 12 s: older batches of the minute were trimmed away.
    full = records(*[(now - 0.1 * i, 8) for i in range(120)])
    rate, mean = batch_rates(full, now)
    assert mean == 8.0
    assert abs(rate - 119 * 8 / 11.9) < 1.0  # about 80 images/s, not 120*8/60 = 16


def shard(
    name: str, live: bool, gpu: GpuReading | None = None, index: int | None = None, status: str = ""
) -> ShardStatus:
    return ShardStatus(
        status=status or (LIVE if live else DOWN),
        reason="a batch has been in the model for 12s (limit 10s)" if status == "stuck" else "",
        shard=name,
        kind="gpu" if gpu else "cpu",
        device_index=index,
        device_name="NVIDIA H100 80GB HBM3" if gpu else "CPU",
        live=live,
        pid=4242 if live else None,
        heartbeat_age_s=0.4 if live else None,
        queue_depth=3,
        in_flight=32,
        images_per_s=812.25,
        mean_batch_size=28.4,
        gpu=gpu,
    )


def test_table_shows_gpu_figures_and_dashes_for_cpu_shards():
    text = render_status_table(
        [shard("gpu0", True, GpuReading(87, 10 * GIB, 80 * GIB, 61, 312.4), 0), shard("cpu0", True)]
    )
    header, gpu_row, cpu_row, summary = text.splitlines()
    assert header.split() == [
        "SHARD", "DEVICE", "UTIL", "MEMORY", "TEMP", "POWER", "QUEUE", "IN-FLIGHT", "WORKER", "PID",
        "HEARTBEAT", "IMG/S", "BATCH",
    ]  # fmt: skip
    assert "0: NVIDIA H100 80GB HBM3" in gpu_row
    for figure in ("87%", "10.0/80.0 GiB", "61C", "312W", "live", "4242", "0.4s ago", "812.2", "28.4"):
        assert figure in gpu_row
    assert cpu_row.split()[:6] == ["cpu0", "CPU", "-", "-", "-", "-"]
    assert summary == "2 shard(s): 2 live, 0 down"


def test_exit_code_is_non_zero_when_a_shard_is_down_or_none_is_registered():
    assert exit_code([shard("cpu0", True), shard("cpu1", True)]) == EXIT_OK
    assert exit_code([shard("cpu0", True), shard("cpu1", False)]) == EXIT_SHARD_DOWN
    assert exit_code([]) == EXIT_SHARD_DOWN
    text = render_status_table([shard("cpu0", True), shard("cpu1", False)])
    assert "DOWN" in text.splitlines()[2]
    assert text.endswith("2 shard(s): 1 live, 1 down (cpu1)")


def test_a_stuck_shard_says_so_and_why():
    text = render_status_table([shard("gpu0", True), shard("gpu1", False, status="stuck")])
    assert "STUCK" in text.splitlines()[2]
    assert text.splitlines()[-2] == "2 shard(s): 1 live, 1 down (gpu1)"
    assert text.splitlines()[-1] == "gpu1 STUCK: a batch has been in the model for 12s (limit 10s)"
    assert exit_code([shard("gpu0", True), shard("gpu1", False, status="stuck")]) == EXIT_SHARD_DOWN


def test_a_failed_shard_shows_failed_with_its_reason_and_a_fallback_says_so():
    reason = "tensorflow 2.21.0, a build without CUDA, sees no GPU, but NVML lists GPU 1: install ..."
    failed = dataclasses.replace(shard("gpu1", False, index=1), status="failed", failed=True, reason=reason)
    fallback = dataclasses.replace(
        shard("gpu0", True, index=0),
        device_name="CPU (fallback for GPU 0: NVIDIA H100)",
        fallback=True,
        reason="... serving on the CPU (devices.cpu_fallback = true)",
    )
    lines = render_status_table([fallback, failed]).splitlines()
    assert lines[2].split()[0] == "gpu1" and "FAILED" in lines[2].split()
    assert "0: CPU (fallback for GPU 0: NVIDIA H100)" in lines[1]
    assert lines[3] == "2 shard(s): 1 live, 1 down (gpu1), 1 failed to start"
    assert lines[4] == f"gpu1 FAILED: {reason}"
    assert lines[5].startswith("gpu0 CPU FALLBACK: ")
    assert exit_code([fallback, failed]) == 2


def test_the_shards_document_matches_its_openapi_schema():
    """GET /shards' schema is derived from ShardStatus: a field added there is described without a second edit
    (the hand-written schema had missed `failed`, `fallback` and `backend`)."""
    gpu = GpuReading(87, 10 * GIB, 80 * GIB, 61, 312.4)
    document = shards_json([shard("gpu0", True, gpu, 0), shard("gpu1", False, status="stuck", index=1)], True)
    schemas = openapi_document(Settings(), "test")["components"]["schemas"]
    validator = jsonschema.Draft202012Validator(
        {"$ref": "#/components/schemas/Shards", "components": {"schemas": schemas}}
    )
    assert list(validator.iter_errors(document)) == []
    assert set(schemas["Shard"]["properties"]) == {field.name for field in dataclasses.fields(ShardStatus)}
    assert schemas["Shard"]["properties"]["status"]["enum"] == list(SHARD_STATUSES)
