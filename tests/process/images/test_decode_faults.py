"""A worker killed while it decodes its batch (the shard decodes uploads, daemon/images/shard_decode.py):
every caller still gets one answer, decoded again by the worker's successor from the same segments.

The stand-in model spends 1 ms per batch and each upload is a 48 MP PNG whose decode takes a good part of a
second, so a batch seen claimed in Redis is a batch being decoded; the test measures that decode here and the
time from seeing the claim to the kill, and asserts the one is far longer than the other.
"""

from __future__ import annotations

import io
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from daemon.images.decode import decode_image
from daemon.queue.keys import processing_key
from daemon.settings import ModelSettings
from tests.conftest import standin_model
from tests.process.test_faults import (
    BURST,
    account,
    burst,
    held,
    reply_keys_left,
    segments_named,
    wait_all_held_with_a_batch_claimed,
)

pytestmark = pytest.mark.slow

BIG = (8000, 6000)
"""48 MP, under the shipped 50 MP limit; rows of a repeated random pattern keep the file near 3 MB."""


def big_png() -> bytes:
    width, height = BIG
    rows = np.random.default_rng(0).integers(0, 256, (height, 64, 3), dtype=np.uint8)
    picture = np.tile(rows, (1, width // 64 + 1, 1))[:, :width]
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_a_worker_killed_mid_decode_loses_nothing_and_answers_each_once(start_appliance, tmp_path):
    upload = big_png()
    started = time.monotonic()
    decode_image(upload, ModelSettings(), 50_000_000)
    decode_s = time.monotonic() - started
    assert decode_s >= 0.2, f"the upload decodes in {decode_s:.2f}s: too short to strike inside"
    appliance = start_appliance(
        shards=1,
        model={"path": standin_model(tmp_path, 1.0)},
        batching={"max_wait_ms": 0},
        api={"request_timeout_s": 90.0, "decode_in": "shard"},
    )
    victim = appliance.pid_of("worker:worker-0")
    run = burst(appliance, upload)
    wait_all_held_with_a_batch_claimed(appliance, ["cpu0"], "cpu0")
    seen = time.monotonic()
    claimed, queued = held(appliance.redis(), "cpu0")
    in_hand = segments_named(appliance.redis().lrange(processing_key("cpu0"), 0, -1))
    os.kill(victim, signal.SIGKILL)
    struck_after_s = time.monotonic() - seen
    answered_before = run.completed()
    appliance.wait_restarted("worker:worker-0", victim)
    result = run.wait(180)
    account("sigkill mid-decode", result, 0.0, None)
    print(
        f"[sigkill mid-decode] {claimed} claimed, {queued} queued; decode {decode_s:.2f}s, struck after {struck_after_s:.3f}s"
    )
    # The premise: the batch in hand was still decoding (its model call is 1 ms, its decode far longer).
    assert claimed >= 1 and answered_before == 0
    assert struck_after_s < decode_s / 2
    assert len(in_hand) == claimed  # the claimed jobs named their files' segments
    assert [r.status for r in result.records] == [200] * BURST, result.records
    assert f"cpu0: requeued {claimed} job(s) claimed by a previous run" in appliance.log_text()
    assert appliance.pixel_segments() == []
    assert reply_keys_left(appliance, ["cpu0"]) == []  # no job was answered twice
