"""What `tools/gpu_status --json` and `GET /shards` say of a shard comes from its registry entry on a real Redis.

A GPU shard's entry holds what its runtime reported when it started serving: the device, its memory, the
backend, the runtime's and CUDA's versions (docs/gpu.md). No GPU is needed: the entry is written as a
worker on one would write it, and NVML is absent, so nothing here is NVML's live reading.
"""

from __future__ import annotations

import json

from daemon.ops.nvml import Nvml
from daemon.ops.shard_status import collect, shards_json
from daemon.queue.faces import ShardQueues
from daemon.queue.wire import Heartbeat, ShardInfo
from daemon.settings import Settings

H100 = ShardInfo(
    kind="gpu",
    index=0,
    name="NVIDIA H100 80GB HBM3",
    device="/physical_device:GPU:0",
    backend="jax",
    runtime_version="0.11.0",
    cuda_version="13.0",
    memory_total_bytes=85_520_809_984,
)


def test_a_gpu_shard_shows_what_its_runtime_reported_at_start(redis_client):
    settings = Settings()
    ShardQueues(redis_client, "gpu0", settings).beat(H100, Heartbeat(pid=4242))
    (status,) = collect(redis_client, settings, Nvml(None))
    listed = json.loads(json.dumps(shards_json([status], nvml=False)))["shards"][0]
    assert {key: listed[key] for key in ("device_name", "backend", "runtime_version", "cuda_version")} == {
        "device_name": "/physical_device:GPU:0",
        "backend": "jax",
        "runtime_version": "0.11.0",
        "cuda_version": "13.0",
    }
    assert listed["memory_total_bytes"] == 85_520_809_984
    assert listed["gpu"] is None  # no NVML: the registry's figures are all there is
    assert (listed["live"], listed["pid"], listed["device_index"]) == (True, 4242, 0)
