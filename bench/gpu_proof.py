"""`make gpu-proof`: on a box with NVIDIA GPUs, show that the GPUs do the work, and write the figures down.

For a machine without TensorFlow it picks JAX or PyTorch (whichever is installed, JAX first), builds the
default model if it is missing, then measures (1) the model's offline images/s per batch size on one device
(`bench.offline`, pinned as a worker pins itself), (2) the host CPU per image of the shard's JPEG decoding,
on the CPU and with nvJPEG on the GPU (`bench.decode_proof`), and (3) the whole appliance, one worker per GPU, at 1, 64 and
256 clients with the one load engine (`tools.loadgen`, so no wrk is needed): req/s, p50 and p99. It writes
them with the GPU's name, driver, runtime and date into a section of bench/RESULTS.md that it replaces on each
run. A worker that does not see its GPU refuses to start (exit 80), so a served figure here is a GPU figure.

`--quick --cpu` runs the same path on this CPU-only machine in about a minute (the suite runs it on the tiny
model); its section says CPU, so nobody mistakes it for a GPU result.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import offline, sections
from bench.decode_proof import measure_decoders, render_rows
from bench.sections import end_marker, start_marker
from daemon.errors import UsageArgumentParser
from daemon.settings import load_settings
from daemon.shard import discover_shards
from testkit.config import private_paths_env
from testkit.harness import REPO, Appliance
from tools.loadgen import load_uploads, run_load
from tools.runtime_choice import GpuReading, read_gpus

RESULTS = REPO / "bench" / "RESULTS.md"
SECTION = "gpu-proof"
SECTION_START, SECTION_END = start_marker(SECTION), end_marker(SECTION)
"""bench/RESULTS.md keeps everything outside these markers; each run replaces what is between them."""
CLIENTS = (1, 64, 256)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
QUICK_CLIENTS = (1, 4)
QUICK_BATCH_SIZES = (1, 4)
EXIT_NO_GPU = 2


@dataclass(frozen=True, slots=True)
class ServedPoint:
    clients: int
    requests: int
    ok: int
    rps: float
    p50_ms: float
    p99_ms: float


def pick_backend(requested: str | None) -> str:
    """The backend asked for, else JAX or PyTorch when installed (JAX first), else TensorFlow."""
    if requested:
        return requested
    return next((b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None), "tensorflow")


def default_photo() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / "coffee.png"


def appliance_env(folder: Path, backend: str, cpu: bool, overrides: dict[str, str]) -> dict[str, str]:
    return {
        **private_paths_env(folder, "proof-"),
        "INFERD_MODEL_BACKEND": backend,
        **({"INFERD_DEVICES_GPUS": "none"} if cpu else {}),
        **overrides,
    }


def measure_offline(
    config: Path, env: dict[str, str], photo: Path, sizes: tuple[int, ...], seconds: float
) -> dict[str, object]:
    argv = [sys.executable, "-m", "bench.offline", "--config", str(config), "--image", str(photo)]
    argv += ["--batch-sizes", ",".join(map(str, sizes)), "--seconds", str(seconds), "--rounds", "2"]
    done = subprocess.run(
        argv, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(offline.RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"offline benchmark failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    body: dict[str, object] = json.loads(line[len(offline.RESULT_PREFIX) :])
    return body


def measure_served(
    config: Path, env: dict[str, str], folder: Path, photo: Path, clients: tuple[int, ...], seconds: float
) -> tuple[int, list[ServedPoint]]:
    settings = load_settings(config, env={**os.environ, **env})
    shards = len(discover_shards(settings))
    appliance = Appliance(folder, config, settings.api.port, settings.paths.run_dir, shards, env)
    uploads = load_uploads(photo)
    points = []
    try:
        appliance.start(timeout_s=300)
        run_load(f"{appliance.url}/predict", uploads, concurrency=1, requests=4, tls=appliance.tls)  # warm-up
        for count in clients:
            summary = run_load(
                f"{appliance.url}/predict", uploads, concurrency=count, duration_s=seconds, tls=appliance.tls
            ).summary()
            points.append(
                ServedPoint(
                    count,
                    summary.requests,
                    summary.ok,
                    round(summary.ok_rps, 1),
                    summary.latency_ms["p50"],
                    summary.latency_ms["p99"],
                )
            )
    finally:
        appliance.stop()
    return shards, points


def render_section(
    reading: GpuReading,
    backend: str,
    runtime_device: str,
    shards: int,
    body: dict[str, object],
    served: list[ServedPoint],
    model: str,
    quick: bool,
    decode_rows: list[dict[str, object]] | None = None,
) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gpus = ", ".join(sorted(set(reading.gpus))) if reading.gpus else "none (CPU run)"
    cuda = f"CUDA {reading.cuda[0]}.{reading.cuda[1]}" if reading.cuda else "-"
    lines = [
        SECTION_START,
        "## GPU proof (`make gpu-proof`)",
        "",
        f"- date: {when}{' (quick mode)' if quick else ''}",
        f"- GPU(s): {gpus}; driver {reading.driver or '-'} ({cuda}); found by {reading.source}",
        f"- backend: {backend}; offline device: {runtime_device}; {shards} worker(s); model {model}",
        "",
        "| batch | images/s | p50 per call (ms) |",
        "| ---: | ---: | ---: |",
    ]
    points = body["points"]
    assert isinstance(points, list)
    lines += [f"| {p['batch_size']} | {p['images_per_s']:.1f} | {p['batch_p50_ms']:.1f} |" for p in points]
    lines += [
        "",
        "| clients | req/s (200) | p50 (ms) | p99 (ms) | requests |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {s.clients} | {s.rps:.1f} | {s.p50_ms:.1f} | {s.p99_ms:.1f} | {s.requests} |" for s in served
    ]
    lines += render_rows(decode_rows or [])
    if not reading.gpus:
        lines += [
            "",
            "No GPU was at hand for this run: these are CPU figures, kept to show the proof runs end to end.",
        ]
    lines.append(SECTION_END)
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """`document` with its gpu-proof section replaced by `section` (appended when there is none)."""
    return sections.replace_section(document, SECTION, section)


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(description="measure the GPUs doing the work; write bench/RESULTS.md")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU needed): checks the path")
    parser.add_argument(
        "--quick", action="store_true", help="two batch sizes, 1 and 4 clients, short windows"
    )
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="default: JAX or PyTorch")
    parser.add_argument("--config", type=Path, default=REPO / "conf" / "settings.toml", help="settings file")
    parser.add_argument("--image", type=Path, help="photo to classify (default: scikit-image's coffee)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the markdown file to update")
    parser.add_argument("--work-dir", type=Path, help="logs of the appliance (default: a temporary folder)")
    args = parser.parse_args(argv)
    reading = GpuReading() if args.cpu else read_gpus()
    if not args.cpu and not reading.gpus:
        print(
            "gpu_proof: no NVIDIA GPU found (NVML, nvidia-smi); run with --cpu to check the path",
            file=sys.stderr,
        )
        return EXIT_NO_GPU
    backend = pick_backend(args.backend)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="inferd-proof-work-"))
    work.mkdir(parents=True, exist_ok=True)
    env = appliance_env(work, backend, args.cpu, {})
    settings = load_settings(args.config, env={**os.environ, **env})
    if not settings.model.path.is_file():
        subprocess.run(
            [sys.executable, "-m", "daemon.launcher", "--config", str(args.config), "build-default-model"],
            cwd=REPO,
            env={**os.environ, **env},
            check=True,
        )
    photo = args.image or default_photo()
    seconds = 1.0 if args.quick else 5.0
    body = measure_offline(args.config, env, photo, QUICK_BATCH_SIZES if args.quick else BATCH_SIZES, seconds)
    shards, served = measure_served(
        args.config, env, work, photo, QUICK_CLIENTS if args.quick else CLIENTS, 2.0 if args.quick else 20.0
    )
    decode_rows = measure_decoders(
        work / "decode", "cpu" if args.cpu else "cuda:0", 1.0 if args.quick else 5.0
    )
    section = render_section(
        reading,
        backend,
        str(body["device"]),
        shards,
        body,
        served,
        settings.model.path.name,
        args.quick,
        decode_rows,
    )
    previous = args.results.read_text() if args.results.exists() else ""
    args.results.write_text(replace_section(previous, section))
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
