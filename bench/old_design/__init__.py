"""The classic Keras + Redis + Flask design inferd replaces, rebuilt faithfully so it can be measured here.

A Flask web tier pushes base64 float32 JSON onto one Redis list and polls GET every 0.25 s; one model server
LRANGEs up to 32 items every 0.25 s, stacks them with `np.vstack`, predicts, SETs the answers and LTRIMs.
Apache mod_wsgi (one daemon process, 10 threads) is not available here: gunicorn's gthread worker with one
process and 10 threads stands in for it. Nothing is improved: the sleeps, the float32 payloads and the
missing timeouts are the point of the comparison.
"""

from __future__ import annotations

from pathlib import Path

from testkit.harness import PYTHON, Service

WEB_THREADS = 10
"""mod_wsgi's one daemon process with 10 threads, as the old design deployed it."""


def redis_tcp(folder: Path, port: int) -> Service:
    """A throwaway redis-server on loopback TCP, as the old design ran it (no persistence)."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Service("redis", argv, folder / "redis.log")


def old_design_services(
    folder: Path, model: Path, labels: Path, input_size: int, redis_port: int, web_port: int
) -> list[Service]:
    """Redis, the model server and the web tier, in the order they must start."""
    env = {
        "OLD_REDIS_PORT": str(redis_port),
        "OLD_MODEL": str(model),
        "OLD_LABELS": str(labels),
        "OLD_INPUT_SIZE": str(input_size),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
    }
    web = [
        PYTHON,
        "-m",
        "gunicorn",
        "--worker-class",
        "gthread",
        "--workers",
        "1",
        "--threads",
        str(WEB_THREADS),
        "--bind",
        f"127.0.0.1:{web_port}",
        "--timeout",
        "600",
        "--no-control-socket",
        "bench.old_design.web:get_app()",
    ]
    return [
        redis_tcp(folder, redis_port),
        Service(
            "old-model-server", [PYTHON, "-m", "bench.old_design.model_server"], folder / "old-model.log", env
        ),
        Service("old-web", web, folder / "old-web.log", env),
    ]
