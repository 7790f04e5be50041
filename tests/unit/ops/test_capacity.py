"""In-flight capacity: auto threads follow the shards, pools and Redis's maxclients follow the threads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.launcher import render_redis_conf
from daemon.ops.capacity import (
    MAX_AUTO_THREADS,
    REDIS_DEFAULT_MAXCLIENTS,
    api_pool_size,
    api_threads,
    redis_maxclients,
    shard_count_from_env,
)
from daemon.settings import DEFAULT_CONFIG, MAX_API_THREADS, load_settings
from testkit.config import write_settings


def test_auto_threads_hold_two_batches_per_shard_spread_over_the_api_processes():
    settings = load_settings(DEFAULT_CONFIG, env={"INFERD_BATCHING_MAX_BATCH_SIZE": "32"})
    assert settings.api.threads == 0 and settings.api.workers == 2
    # 8 shards x 32 x 2 = 512 requests in flight would be 256 per process: auto stops at 64 a process.
    assert api_threads(settings, 8) == MAX_AUTO_THREADS == 64
    more = load_settings(
        DEFAULT_CONFIG, env={"INFERD_BATCHING_MAX_BATCH_SIZE": "32", "INFERD_API_WORKERS": "8"}
    )
    assert more.api.workers * api_threads(more, 8) >= 8 * 32 * 2  # with enough processes, every batch fills
    # A one-shard box keeps at least the old fixed 16 threads per process.
    assert api_threads(settings, 1) == 32
    small = load_settings(DEFAULT_CONFIG, env={"INFERD_BATCHING_MAX_BATCH_SIZE": "4"})
    assert api_threads(small, 1) == 16


def test_auto_threads_never_pass_the_auto_maximum_but_an_explicit_count_may():
    settings = load_settings(DEFAULT_CONFIG, env={"INFERD_BATCHING_MAX_BATCH_SIZE": "1024"})
    assert api_threads(settings, 64) == MAX_AUTO_THREADS
    explicit = load_settings(DEFAULT_CONFIG, env={"INFERD_API_THREADS": str(MAX_API_THREADS)})
    assert api_threads(explicit, 1) == MAX_API_THREADS


def test_an_explicit_thread_count_is_taken_as_it_stands():
    settings = load_settings(DEFAULT_CONFIG, env={"INFERD_API_THREADS": "7"})
    assert api_threads(settings, 8) == 7


def test_every_thread_gets_a_pool_connection_and_redis_a_client_slot():
    settings = load_settings(DEFAULT_CONFIG, env={"INFERD_API_THREADS": "1024", "INFERD_API_WORKERS": "16"})
    pool = api_pool_size(settings, 8)
    assert pool > 1024
    assert redis_maxclients(settings, 8) >= 16 * pool + 8
    assert redis_maxclients(load_settings(DEFAULT_CONFIG, env={}), 1) == REDIS_DEFAULT_MAXCLIENTS
    conf = render_redis_conf(settings, 8)
    assert f"maxclients {redis_maxclients(settings, 8)}" in conf.splitlines()


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("threads", 1025, "0 (auto"),
        ("threads", -1, "0 (auto"),
        ("workers", 0, "from 1 to"),
        ("workers", 65, "from 1 to"),
    ],
)
def test_impossible_api_sizes_stop_the_start(tmp_path: Path, key: str, value: int, allowed: str):
    config = write_settings(tmp_path, {"api": {key: value}})
    with pytest.raises(ConfigError, match=re.escape(f"api.{key} = {value} is not allowed: {allowed}")):
        load_settings(config, env={})


def test_shard_count_comes_from_the_launcher_or_is_one():
    assert shard_count_from_env({"INFERD_SHARD_COUNT": "8"}) == 8
    assert shard_count_from_env({}) == 1
    assert shard_count_from_env({"INFERD_SHARD_COUNT": "zero"}) == 1
