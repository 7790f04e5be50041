"""Section (k) of bench/RESULTS.md and issue 19's targets, from the floors phase's figures (bench/floors.py)."""

from __future__ import annotations

import math
from typing import Any

from bench.floors import SECTION, TARGET_CLIENTS
from bench.results import Target
from bench.sections import end_marker, start_marker

# What issue 19 asks of the front door, each measured in this phase (see floors_targets).
ALL_IN_TARGET_MS = 2.0
ALL_IN_OVER_FLOOR_TARGET = 1.5
API_TARGET_MS = 1.0
CAMERA_OVER_FLOOR_TARGET = 1.2
ADDED_P50_TARGET_MS = 1.5
BATCH_OF_ONE_TARGET = 1.2


def _round(found: dict[str, Any], image: str, clients: int) -> dict[str, Any] | None:
    return next(
        (p for p in found.get("appliance", []) if p["image"] == image and p["clients"] == clients), None
    )


def model_cpu_ms(found: dict[str, Any], mean_batch: float) -> float | None:
    """The model's own CPU per image at the measured batch size nearest (in ratio) to `mean_batch`."""
    measured = {
        int(size): float(ms) for size, ms in found.get("model", {}).get("cpu_ms_per_image", {}).items()
    }
    if not measured:
        return None
    nearest = min(measured, key=lambda size: abs(math.log(size) - math.log(max(mean_batch, 1.0))))
    return measured[nearest]


def _mean_batch(point: dict[str, Any]) -> float:
    batches = point.get("mean_batch") or {}
    return sum(batches.values()) / len(batches) if batches else 1.0


def floors_targets(found: dict[str, Any] | None) -> list[Target]:
    """Issue 19's targets for the front door, each from this phase's own figures."""
    if not found:
        return [Target("front door CPU per image (floors phase)", "not measured", "see (k)", None)]
    out: list[Target] = []
    jpeg_floor = found["decode"]["jpeg"]["appliance_ms"]
    busy = _round(found, "jpeg", TARGET_CLIENTS)
    if busy is not None:
        total = sum(busy["cpu_ms"].values())
        out += [
            Target(
                f"all-in CPU per image, tiny model, 451x300 JPEG, {TARGET_CLIENTS} clients",
                f"{total:.2f} ms",
                f"<= {ALL_IN_TARGET_MS:g} ms",
                total <= ALL_IN_TARGET_MS,
            ),
            Target(
                "  ... over the decode floor beside it",
                f"{total:.2f} / {jpeg_floor:.2f} = {total / jpeg_floor:.2f}x",
                f"<= {ALL_IN_OVER_FLOOR_TARGET:g}x",
                total / jpeg_floor <= ALL_IN_OVER_FLOOR_TARGET,
            ),
            Target(
                "  ... the API processes' share (decode in the API: a CPU box)",
                f"{busy['cpu_ms'].get('api', 0.0):.2f} ms",
                f"<= {API_TARGET_MS:g} ms",
                busy["cpu_ms"].get("api", 0.0) <= API_TARGET_MS,
            ),
        ]
    shard = found.get("shard_decode")
    if shard is not None:
        api = shard["cpu_ms"].get("api", 0.0)
        out.append(
            Target(
                "  ... the API processes' share (decode in the shard: a GPU box)",
                f"{api:.2f} ms",
                f"<= {API_TARGET_MS:g} ms",
                api <= API_TARGET_MS,
            )
        )
    camera = _round(found, "camera", 1)
    if camera is not None:
        total, floor = sum(camera["cpu_ms"].values()), found["decode"]["camera"]["appliance_ms"]
        out.append(
            Target(
                "12 MP JPEG at 1 client: all-in over its decode floor",
                f"{total:.1f} / {floor:.1f} = {total / floor:.2f}x",
                f"<= {CAMERA_OVER_FLOOR_TARGET:g}x",
                total / floor <= CAMERA_OVER_FLOOR_TARGET,
            )
        )
    single, decode_only = _round(found, "jpeg", 1), found.get("decode_only")
    if single is not None and decode_only is not None:
        added = single["p50_ms"] - decode_only["p50_ms"]
        out.append(
            Target(
                "1 client: p50 over the decode-only app's",
                f"{single['p50_ms']:.1f} - {decode_only['p50_ms']:.1f} = {added:.1f} ms",
                f"<= {ADDED_P50_TARGET_MS:g} ms",
                added <= ADDED_P50_TARGET_MS,
            )
        )
    model = found.get("model")
    if single is not None and model is not None and single.get("infer_ms_per_batch"):
        ratio = single["infer_ms_per_batch"] / model["batch1_p50_ms"]
        out.append(
            Target(
                "shard's time for a batch of one over the model call offline",
                f"{single['infer_ms_per_batch']:.2f} / {model['batch1_p50_ms']:.2f} ms = {ratio:.2f}x",
                f"<= {BATCH_OF_ONE_TARGET:g}x",
                ratio <= BATCH_OF_ONE_TARGET,
            )
        )
    return out


def floors_section(found: dict[str, Any]) -> str:
    """Markdown for section (k)."""
    out = [
        start_marker(SECTION),
        "## (k) Floors: what an image costs at the least, and what the appliance spends on it",
        "",
        "CPU ms per image. Decode floor: decode, centre crop and resize to 224 in a tight loop on one core. "
        "Appliance: the tiny model at 224 under `inferd run`, wrk closed-loop clients, CPU from /proc per role "
        f"(`python -m bench.run --phases floors`). Commit {found.get('commit', '?')}; load average "
        f"{found.get('load_before', 0.0):.1f} before and {found.get('load_after', 0.0):.1f} after, on a shared machine: "
        "req/s follows the share of the cores the appliance got, CPU per image is the figure. A row marked * "
        "served fewer requests than it had clients: its CPU includes uploads still in flight and is no per-image figure.",
        "",
        "| image | bytes | decode floor, appliance's decoder | decode floor, fastest installed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for image, floor in found["decode"].items():
        out.append(
            f"| {image} | {floor['bytes']:,} | {floor['appliance_ms']:.2f} | {floor['fastest_ms']:.2f} |"
        )
    http = found["http"]
    out += [
        "",
        f"HTTP floor (gunicorn with the API's settings, a handler that reads the multipart upload and answers at "
        f"once, no nginx), 451x300 JPEG at {http['clients']} clients: **{http['cpu_ms']:.2f} ms** per request, "
        f"{http['rps']:.0f} req/s, p50 {http['p50_ms']:.1f} ms.",
    ]
    model = found.get("model")
    if model:
        per_image = ", ".join(f"batch {size}: {ms:.2f}" for size, ms in model["cpu_ms_per_image"].items())
        out += [
            "",
            f"Model floor (the tiny model's own call, offline, {model['device']}): batch 1 takes "
            f"**{model['batch1_p50_ms']:.2f} ms** (p50); CPU ms per image {per_image}. It is in the workers' "
            'column below; "less model" takes it out (at the measured batch size nearest the round\'s mean '
            "batch), which leaves what the appliance spends around the model.",
        ]
    if found.get("decode_only"):
        only = found["decode_only"]
        out += [
            "",
            f"Decode-only app (the API's decode, no model, no queue) at 1 client: p50 {only['p50_ms']:.1f} ms, {only['rps']:.0f} req/s.",
        ]
        single = _round(found, "jpeg", 1)
        if single is not None and model:
            rest = single["p50_ms"] - only["p50_ms"] - model["batch1_p50_ms"]
            out[-1] += (
                f" The appliance's p50 at 1 client, {single['p50_ms']:.1f} ms, is that plus the model's batch of "
                f"one ({model['batch1_p50_ms']:.1f} ms offline) plus **{rest:.1f} ms** for the front door, the "
                "queue and the reply."
            )
    out += [
        "",
        "| image | clients | req/s | p50 ms | errors | api | workers | redis | front door | all-in | all-in / decode floor | less model | shard ms per batch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    shard = found.get("shard_decode")
    rows = [(point["image"], point) for point in found["appliance"]]
    if shard:
        rows.append((f"{shard['image']}, decode in shard", shard))
    for label, point in rows:
        cpu = point["cpu_ms"]
        total = sum(cpu.values())
        floor = found["decode"][point["image"]]["appliance_ms"]
        model_ms = model_cpu_ms(found, _mean_batch(point))
        less_model = "-" if model_ms is None else f"{total - model_ms:.2f}"
        infer = point.get("infer_ms_per_batch")
        partial = "*" if point.get("served", point["clients"]) < point["clients"] else ""
        out.append(
            f"| {label} | {point['clients']}{partial} | {point['rps']:.0f} | {point['p50_ms']:.1f} | {point['errors']} | "
            f"{cpu.get('api', 0.0):.2f} | {cpu.get('workers', 0.0):.2f} | {cpu.get('redis', 0.0):.2f} | "
            f"{cpu.get('front door', 0.0):.2f} | {total:.2f} | {total / floor:.2f} | {less_model} | "
            f"{'-' if infer is None else f'{infer:.2f}'} |"
        )
    out.append(end_marker(SECTION))
    return "\n".join(out) + "\n"
