"""bench/results.png: one figure of six panels, one per measured phase, beside bench/RESULTS.md's tables."""

from __future__ import annotations

import math
from pathlib import Path

from bench.results import BenchResults
from bench.wrk import NO_RESULT


def render_plot(r: BenchResults, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax = axes[0][0]
    if r.offline:
        ax.plot([p.batch_size for p in r.offline], [p.images_per_s for p in r.offline], "o-", label="offline")
        ax.set_xscale("log", base=2)
    for s in r.served:
        ax.axhline(s.rps, linestyle="--", linewidth=0.8, color="tab:orange")
    ax.set(
        title="(a) offline images/s by batch size\n(dashed: served req/s at each client count)",
        xlabel="batch size",
        ylabel="images/s",
    )

    ax = axes[0][1]
    if r.served:
        clients = [s.clients for s in r.served]
        ax.plot(clients, [s.rps for s in r.served], "o-", label="served req/s")
        best = r.offline_best()
        if best:
            ax.axhline(best.images_per_s, color="grey", linestyle=":", label="offline best")
        ax.set_xscale("log", base=2)
        twin = ax.twinx()
        twin.plot(clients, [s.p99_ms for s in r.served], "s--", color="tab:red", label="p99 ms")
        twin.plot(clients, [s.p50_ms for s in r.served], "^--", color="tab:pink", label="p50 ms")
        twin.set_ylabel("latency (ms)")
        twin.legend(loc="lower right")
        ax.legend(loc="upper left")
    ax.set(
        title=f"(b) served, {r.meta.get('served_model', 'default model')}, JPEG",
        xlabel="concurrent clients",
        ylabel="req/s",
    )

    ax = axes[0][2]
    systems = ["inferd", "decode-only", "old design"]
    groups = sorted({(t.image, t.clients) for t in r.tiny}, key=lambda g: (g[0] != "png", g[1]))
    width = 0.27
    for i, system in enumerate(systems):
        values = [(r.tiny_at(system, image, c) or NO_RESULT).rps for image, c in groups]
        ax.bar([x + (i - 1) * width for x in range(len(groups))], values, width, label=system)
    ax.set_xticks(range(len(groups)), [f"{image}\n{c}" for image, c in groups])
    ax.set(title="(d) tiny model: req/s by image and clients", ylabel="req/s")
    ax.legend()

    ax = axes[1][0]
    if r.scaling:
        shards = [s.shards for s in r.scaling]
        one = next((s.jobs_per_s for s in r.scaling if s.shards == 1), 0.0)
        ax.plot(shards, [s.jobs_per_s for s in r.scaling], "o-", label="measured")
        ax.plot(shards, [n * one for n in shards], ":", color="grey", label="linear (n x one shard)")
        ax.plot(
            shards,
            [0.9 * n * one for n in shards],
            "--",
            color="tab:red",
            linewidth=0.8,
            label="90% of linear",
        )
        ax.legend()
    ax.set(title="(e) simulated shards: jobs/s", xlabel="shards", ylabel="jobs/s")

    ax = axes[1][1]
    if r.policies:
        names = [p.policy for p in r.policies]
        ax.bar([x - 0.2 for x in range(len(names))], [p.p50_ms for p in r.policies], 0.4, label="p50")
        ax.bar([x + 0.2 for x in range(len(names))], [p.p99_ms for p in r.policies], 0.4, label="p99")
        ax.set_xticks(range(len(names)), names)
        ax.legend()
    ax.set(title="(e) unequal shard speeds: latency by policy", ylabel="ms")

    ax = axes[1][2]
    if r.soak is not None:
        minutes = [t / 60 for t in r.soak.samples.times_s]
        for role, history in sorted(r.soak.samples.rss.items()):
            ax.plot(minutes, [v / 2**20 if v else math.nan for v in history], label=role)
        ax.plot(minutes, [v / 2**20 for v in r.soak.samples.redis_used], "k--", label="Redis used_memory")
        ax.axvline(r.soak.warmup_s / 60, color="grey", linestyle=":")
        ax.axhline(r.soak.redis_bound_mb, color="k", linestyle=":", label="Redis bound (maxmemory)")
        ax.set_yscale("log")
        ax.legend(fontsize="x-small")
    ax.set(title="(g) soak: RSS by process (MB)", xlabel="minutes", ylabel="MB")

    fig.suptitle(f"inferd benchmark, {r.meta.get('date', '')}, {r.meta.get('machine', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
