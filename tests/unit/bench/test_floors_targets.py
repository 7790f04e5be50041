"""Issue 19's targets in the benchmark's table: each verdict from the floors phase's own figures."""

from __future__ import annotations

from typing import Any

from bench.floors_report import floors_section, floors_targets, model_cpu_ms


def _round(image: str, clients: int, api: float, workers: float, p50: float, infer: float) -> dict[str, Any]:
    cpu = {"api": api, "workers": workers, "redis": 0.1, "front door": 0.1}
    return {
        "image": image,
        "clients": clients,
        "p50_ms": p50,
        "cpu_ms": cpu,
        "mean_batch": {"cpu0": 30.0},
        "infer_ms_per_batch": infer,
        "errors": 0,
        "rps": 100.0,
    }


def _found(api_64: float) -> dict[str, Any]:
    return {
        "decode": {
            "jpeg": {"appliance_ms": 2.0, "fastest_ms": 1.0, "bytes": 40_000},
            "camera": {"appliance_ms": 40.0, "fastest_ms": 38.0, "bytes": 4_000_000},
        },
        "appliance": [
            _round("jpeg", 1, 3.0, 4.0, 9.0, 3.0),
            _round("jpeg", 64, api_64, 1.0, 600.0, 50.0),
            _round("camera", 1, 43.0, 4.0, 300.0, 3.0),
        ],
        "shard_decode": _round("jpeg", 64, 0.9, 3.0, 600.0, 60.0),
        "model": {"batch1_p50_ms": 2.0, "cpu_ms_per_image": {"1": 3.5, "32": 1.2}},
        "decode_only": {"p50_ms": 4.0, "rps": 250.0},
    }


def test_each_target_is_judged_on_its_own_figure():
    verdicts = {t.what.strip(" ."): (t.measured, t.passed) for t in floors_targets(_found(api_64=0.8))}
    all_in = verdicts["all-in CPU per image, tiny model, 451x300 JPEG, 64 clients"]
    assert all_in == ("2.00 ms", True)  # 0.8 + 1.0 + 0.1 + 0.1
    assert verdicts["over the decode floor beside it"][1] is True  # 2.0 / 2.0
    assert verdicts["the API processes' share (decode in the API: a CPU box)"] == ("0.80 ms", True)
    assert verdicts["the API processes' share (decode in the shard: a GPU box)"] == ("0.90 ms", True)
    assert verdicts["12 MP JPEG at 1 client: all-in over its decode floor"][1] is True  # 47.2 / 40
    assert verdicts["1 client: p50 over the decode-only app's"] == ("9.0 - 4.0 = 5.0 ms", False)
    assert verdicts["shard's time for a batch of one over the model call offline"][1] is False  # 3.0 / 2.0


def test_a_costlier_api_fails_its_targets():
    verdicts = {t.what.strip(" ."): t.passed for t in floors_targets(_found(api_64=1.5))}
    assert verdicts["all-in CPU per image, tiny model, 451x300 JPEG, 64 clients"] is False
    assert verdicts["the API processes' share (decode in the API: a CPU box)"] is False


def test_without_the_phase_the_table_says_not_measured():
    (only,) = floors_targets(None)
    assert only.passed is None and only.measured == "not measured"


def test_the_model_share_comes_from_the_batch_size_nearest_the_rounds_mean():
    found = _found(api_64=0.8)
    assert model_cpu_ms(found, 1.0) == 3.5
    assert model_cpu_ms(found, 28.0) == 1.2
    assert model_cpu_ms({}, 4.0) is None


def test_the_section_splits_one_clients_p50_and_shows_the_gpu_boxs_placement():
    found = {**_found(api_64=0.8), "http": {"clients": 64, "cpu_ms": 0.45, "rps": 900.0, "p50_ms": 60.0}}
    found["model"]["device"] = "cpu0"
    text = floors_section(found)
    # 9.0 ms at one client = 4.0 decode-only + 2.0 model + 3.0 for the rest
    assert "plus **3.0 ms** for the front door, the queue and the reply" in text
    assert "| jpeg, decode in shard | 64 |" in text
    # less model: all-in 2.0 at a mean batch of 30 less the model's 1.2 ms at batch 32
    busy_row = next(line for line in text.splitlines() if line.startswith("| jpeg | 64 |"))
    assert "| 0.80 |" in busy_row
