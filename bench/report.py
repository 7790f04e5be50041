"""Writes what a run measured: bench/RESULTS.md (tables), a PNG plot, and the summary printed at the end."""

from __future__ import annotations

import math
from pathlib import Path

from bench import sections
from bench.floors_report import floors_targets
from bench.frontdoor import STANDIN_BATCH_MS, STANDIN_PER_IMAGE_MS, TARGET_JOBS_PER_S
from bench.markdown import fmt, load_cell, own_run_note, table
from bench.peers_report import SECTION as PEERS_SECTION
from bench.peers_report import peers_section, summary_lines
from bench.plot import render_plot
from bench.results import BenchResults, Target, targets
from bench.wrk import NO_RESULT

FRONTDOOR_SECTION = "frontdoor"
CPU_GROUPS = ("api", "redis", "workers", "front door", "other")


def targets_table(found: list[Target]) -> list[str]:
    return table(
        ["target", "measured", "goal", "verdict"],
        [[t.what, t.measured, t.goal, f"**{t.verdict}**"] for t in found],
    )


def all_targets(r: BenchResults) -> list[Target]:
    """Every phase's targets; the floors phase keeps its figures as plain data in the run's meta."""
    return [*targets(r), *floors_targets(r.meta.get("floors"))]


def render_markdown(r: BenchResults, plot_name: str) -> str:
    meta = r.meta
    out = ["# inferd benchmark results", ""]
    out += [f"- **Date**: {meta.get('date', '-')}"]
    out += [f"- **Commit**: {meta.get('commit', '-')}"]
    out += [f"- **Machine**: {meta.get('machine', '-')}"]
    out += [f"- **Software**: {meta.get('software', '-')}"]
    out += [f"- **Command**: `{meta.get('command', '-')}` ({meta.get('wall_s', 0):.0f} s in all)"]
    out += [f"- **Shared machine**: {meta.get('sharing', '-')}"]
    phase_s, others = meta.get("phase_s", {}), meta.get("phase_others_pct", {})
    timing = ", ".join(f"{name} {phase_s[name]:.0f} s ({others.get(name, 0):.0f}%)" for name in phase_s)
    out += [f"- **Phases** (seconds, and the share of the cores other processes used meanwhile): {timing}"]
    out += [f"- **Phase settings**: {meta.get('durations', '-')}"]
    out += [f"- **Appliance settings** (conf/settings.toml plus overrides): {meta.get('settings', '-')}"]
    for failure in meta.get("failures", []):
        out += [f"- **FAILED phase** {failure}"]
    out += ["", "Figures are machine-specific: compare them as ratios measured in the same run.", ""]

    out += ["## Targets", "", *targets_table(all_targets(r))]

    model = meta.get("served_model", "default model")
    out += [f"## (a) Offline throughput of the {model}", ""]
    out += [f"`Classifier.predict` on uint8 batches of the decoded photo, on {r.offline_device or '-'}.", ""]
    best = r.offline_best()
    out += table(
        ["batch size", "images/s", "p50 per call (ms)", "calls"],
        [
            [
                str(p.batch_size),
                fmt(p.images_per_s) + (" **best**" if p is best else ""),
                fmt(p.batch_p50_ms),
                str(p.calls),
            ]
            for p in r.offline
        ],
    )

    out += ["## (b) Served throughput through the whole appliance, and (c) its ratio to offline", ""]
    out += [
        f"The {model}, JPEG 451x300 (astronaut), wrk closed-loop clients, `inferd run` under supervisord.",
        "",
    ]
    out += table(
        ["clients", "req/s", "p50 (ms)", "p90 (ms)", "p99 (ms)", "errors", "served / offline best"],
        [
            [
                str(s.clients),
                fmt(s.rps),
                fmt(s.p50_ms),
                fmt(s.p90_ms),
                fmt(s.p99_ms),
                str(s.errors),
                fmt(100 * s.rps / best.images_per_s, 0, "%") if best else "-",
            ]
            for s in r.served
        ],
    )
    out += ["## (f) Added latency at one client", ""]
    one = r.served_at(1)
    out += [
        f"Served p50 at 1 client {fmt(one.p50_ms if one else None)} ms - one batch-1 inference "
        f"{fmt(r.batch1_ms())} ms = **{fmt(r.added_latency_ms())} ms** (upload, decode, queue, reply).",
        "",
    ]

    out += ["## (d) Tiny model: inferd vs the decode-only ceiling vs the old design", ""]
    out += [
        "Same tiny Keras model (tests/tiny_model.py) behind inferd and the old design; the decode-only app",
        "(bench/decode_only.py) runs under inferd's gunicorn settings. Cells: req/s (p50 / p99).",
        meta.get("tiny_method", ""),
        "Old design: Flask under gunicorn gthread, 1 process x 10 threads, standing in for mod_wsgi.",
        "",
    ]
    for image in sorted({t.image for t in r.tiny}, reverse=True):
        rows = []
        for clients in sorted({t.clients for t in r.tiny if t.image == image}):
            inferd = r.tiny_at("inferd", image, clients)
            ceiling = r.tiny_at("decode-only", image, clients)
            old = r.tiny_at("old design", image, clients)
            rows.append(
                [
                    str(clients),
                    load_cell(inferd),
                    load_cell(ceiling),
                    load_cell(old),
                    fmt(100 * inferd.rps / ceiling.rps, 0, "%")
                    if inferd and ceiling and ceiling.rps
                    else "-",
                    fmt(inferd.rps / old.rps, 1, "x") if inferd and old and old.rps else "-",
                ]
            )
        out += [f"**{image.upper()} 451x300**", ""]
        out += table(
            ["clients", "inferd", "decode-only", "old design", "inferd / ceiling", "inferd / old"], rows
        )

    out += ["## (e) Simulated shards: dispatcher scaling and dispatch policies", ""]
    out += [f"{r.meta.get('simulated', '')}", ""]
    one_shard = next((s.jobs_per_s for s in r.scaling if s.shards == 1), None)
    out += table(
        ["shards", "clients", "jobs/s", "n x one shard", "efficiency", "p50 (ms)", "p99 (ms)", "rejected"],
        [
            [
                str(s.shards),
                str(s.clients),
                fmt(s.jobs_per_s),
                fmt(s.shards * one_shard if one_shard else None),
                fmt(100 * (r.scaling_efficiency(s.shards) or math.nan), 0, "%"),
                fmt(s.p50_ms),
                fmt(s.p99_ms),
                str(s.rejected),
            ]
            for s in r.scaling
        ],
    )
    out += [f"Unequal speeds: {r.meta.get('policies', '')}", ""]
    out += table(
        ["policy", "clients", "jobs/s", "p50 (ms)", "p99 (ms)", "jobs per shard"],
        [
            [
                p.policy,
                str(p.clients),
                fmt(p.jobs_per_s),
                fmt(p.p50_ms),
                fmt(p.p99_ms),
                ", ".join(f"{k}: {v}" for k, v in p.per_shard.items()),
            ]
            for p in r.policies
        ],
    )

    out += ["## (g) Soak", ""]
    soak = r.soak
    if soak is None:
        out += ["Not run (`--soak-minutes 0`).", ""]
    else:
        out += [
            f"{soak.minutes:g} min at {soak.clients} clients ({model}, JPEG): {fmt(soak.rps)} req/s, "
            f"p50 {fmt(soak.p50_ms)} ms, p99 {fmt(soak.p99_ms)} ms, {soak.errors} errors. RSS sampled every "
            f"{r.meta.get('soak_interval_s', '-')} s; growth measured from the first sample after a "
            f"{soak.warmup_s:.0f} s warm-up to the last.",
            "",
        ]
        out += table(
            ["process", "pids seen", "RSS after warm-up (MB)", "final (MB)", "peak (MB)", "growth"],
            [
                [
                    g.role,
                    str(g.pids),
                    fmt(g.after_warmup_mb),
                    fmt(g.final_mb),
                    fmt(g.peak_mb),
                    fmt(g.growth_pct, 1, "%"),
                ]
                for g in soak.growth
            ],
        )
        out += [
            f"Redis `used_memory`: peak {fmt(soak.redis_peak_mb)} MB; the bound the queue limits imply "
            f"(`daemon.launcher.redis_maxmemory_mb`, Redis's maxmemory) is {soak.redis_bound_mb} MB.",
            "",
        ]

    if r.profiles:
        out += [f"## Profiles (py-spy, under 64 clients, {model})", ""]
        out += [
            "Share of py-spy samples by innermost Python frame (threads py-spy judges idle are left out, but a",
            "thread waiting in a Redis read can still be counted; TensorFlow's compute threads are native and",
            "do not appear). Worker samples are few because its time is spent in those native threads.",
            "",
        ]
        for summary in r.profiles:
            out += [
                f"**{summary.name}** ({summary.samples} samples, folded stacks in `{summary.raw_path}`)",
                "",
            ]
            out += table(
                ["function", "share"], [[name, fmt(share, 1, "%")] for name, share in summary.top_self]
            )

    if r.frontdoor:
        out += [frontdoor_section(r, standalone=False)]
    if r.peers or r.meta.get("peers_skipped"):
        out += [peers_section(r, standalone=False)]
    out += ["## Plot", "", f"![benchmark plot]({plot_name})", ""]
    return "\n".join(out)


def frontdoor_section(r: BenchResults, standalone: bool) -> str:
    """(h) as a named section; `standalone`: from a run of this phase alone, so it says which run."""
    out = [
        sections.start_marker(FRONTDOOR_SECTION),
        "## (h) The front door against GPU-like stand-in shards",
        "",
    ]
    meta = r.meta
    if standalone:
        out += [own_run_note(meta), ""]
    out += [
        f"`inferd run` with the stand-in model (daemon/model/standin.py: {STANDIN_BATCH_MS:g} ms per batch + "
        f"{STANDIN_PER_IMAGE_MS:g} ms per image, 224x224 jobs, `devices.gpus = none`, one CPU shard per "
        "stand-in device), wrk posting the 451x300 JPEG to `api.port` (whatever front door answers there). "
        "Each level alternates rounds with the decode-only app (the API tier's ceiling, same gunicorn "
        "settings, same cores) and keeps each system's best round. Bound = min(shards x one stand-in "
        "shard's images/s at full batches, the decode-only req/s at that level).",
        "",
    ]
    rows = []
    for p in r.frontdoor:
        batches = ", ".join(f"{shard} {size:.1f}" for shard, size in p.mean_batch.items()) or "-"
        rows.append(
            [
                str(p.shards),
                str(p.clients),
                f"{p.threads_setting} ({p.api_threads})",
                fmt(p.inferd.rps, 0),
                fmt(p.bound, 0),
                fmt(100 * p.inferd.rps / p.bound, 0, "%") if p.bound else "-",
                fmt(p.shards * p.shard_capacity, 0),
                fmt(p.ceiling.rps, 0),
                f"{fmt(p.inferd.p50_ms)} / {fmt(p.inferd.p99_ms)}",
                str(p.inferd.errors),
                batches,
            ]
        )
    out += table(
        [
            "shards",
            "clients",
            "api.threads (per process)",
            "req/s",
            "bound",
            "req/s / bound",
            "devices' img/s",
            "decode-only req/s",
            "p50 / p99 (ms)",
            "errors",
            "mean batch per shard",
        ],
        rows,
    )
    out += [
        "CPU milliseconds per served request, by component (utime + stime from /proc/<pid>/stat of every "
        "process under supervisord, read before and after the kept round); a Redis that spent a whole core "
        "as it did per job here would carry 1 / (its CPU seconds per job) jobs/s.",
        "",
    ]
    groups = [g for g in CPU_GROUPS if any(g in p.cpu_ms_per_request for p in r.frontdoor)]
    out += table(
        ["shards", "clients", "api.threads", *groups, "all", "one Redis: jobs/s"],
        [
            [
                str(p.shards),
                str(p.clients),
                p.threads_setting,
                *(fmt(p.cpu_ms_per_request.get(g), 3) for g in groups),
                fmt(sum(p.cpu_ms_per_request.values()), 3),
                fmt(p.redis_jobs_per_s, 0),
            ]
            for p in r.frontdoor
        ],
    )
    out += [
        "Where Redis's time goes (INFO commandstats, µs per served request, the costliest commands; "
        "Redis's CPU above also holds reading and writing its sockets, which commandstats leaves out):",
        "",
    ]
    out += table(
        ["shards", "clients", "api.threads", "commands (µs per request)"],
        [
            [
                str(p.shards),
                str(p.clients),
                p.threads_setting,
                ", ".join(f"{name} {us:,.0f}" for name, us in p.redis_us_per_request.items()),
            ]
            for p in r.frontdoor
        ],
    )
    best = max(r.frontdoor, key=lambda p: p.inferd.rps, default=None)
    if best is not None and best.redis_jobs_per_s:
        redis_ms = best.cpu_ms_per_request["redis"]
        verdict = "enough" if best.redis_jobs_per_s >= TARGET_JOBS_PER_S else "short"
        out += [
            f"At the busiest level ({best.shards} shards, {best.clients} clients, {best.inferd.rps:,.0f} req/s) "
            f"Redis spent {redis_ms * 1000:,.0f} µs of CPU per job: one Redis core would carry about "
            f"**{best.redis_jobs_per_s:,.0f} jobs/s**, against the {TARGET_JOBS_PER_S:,} jobs/s of 224x224 "
            f"images that 8 GPUs need: {verdict} "
            f"({best.redis_jobs_per_s / TARGET_JOBS_PER_S:.0%} of it).",
            "",
        ]
    out += [sections.end_marker(FRONTDOOR_SECTION)]
    return "\n".join(out) + "\n"


def summary(r: BenchResults) -> str:
    """The lines printed at the end of a run: each target next to its figure, then the key figures."""
    lines = ["", "inferd benchmark summary", "=" * 24]
    for t in all_targets(r):
        lines.append(f"[{t.verdict:>4}] {t.what}: {t.measured} (goal {t.goal})")
    best = r.offline_best()
    if best:
        lines.append(
            f"offline best: {best.images_per_s:.1f} img/s at batch {best.batch_size} on {r.offline_device}"
        )
    for s in r.served:
        lines.append(f"served c={s.clients}: {s.rps:.1f} req/s p50 {s.p50_ms:.1f} ms p99 {s.p99_ms:.1f} ms")
    for image in sorted({t.image for t in r.tiny}, reverse=True):
        clients = max(t.clients for t in r.tiny if t.image == image)
        cells = [
            f"{system} {(r.tiny_at(system, image, clients) or NO_RESULT).rps:.1f}"
            for system in ("inferd", "decode-only", "old design")
        ]
        lines.append(f"tiny {image} c={clients}: " + ", ".join(cells) + " req/s")
    for p in r.policies:
        lines.append(
            f"policy {p.policy}: {p.jobs_per_s:.1f} jobs/s p50 {p.p50_ms:.1f} ms p99 {p.p99_ms:.1f} ms"
        )
    for f in r.frontdoor:
        lines.append(
            f"frontdoor {f.shards} shard(s) c={f.clients} threads {f.threads_setting}: {f.inferd.rps:.0f} req/s "
            f"(bound {f.bound:.0f}), p50 {f.inferd.p50_ms:.1f} ms p99 {f.inferd.p99_ms:.1f} ms, "
            f"Redis {f.cpu_ms_per_request.get('redis', 0) * 1000:.0f} µs CPU/job"
        )
    lines += summary_lines(r)
    return "\n".join(lines)


def write_report(r: BenchResults, markdown: Path, plot: Path) -> None:
    """The whole report; named sections of the previous file that this run did not write are kept."""
    render_plot(r, plot)
    previous = markdown.read_text() if markdown.is_file() else ""
    markdown.write_text(sections.carry_sections(previous, render_markdown(r, plot.name)))


def write_frontdoor_section(r: BenchResults, markdown: Path) -> None:
    """Only (h), from a run of that phase alone: the rest of the file stays as an earlier run wrote it."""
    write_own_section(markdown, FRONTDOOR_SECTION, frontdoor_section(r, True))


def write_peers_section(r: BenchResults, markdown: Path) -> None:
    """Only (i), from a run of that phase alone."""
    write_own_section(markdown, PEERS_SECTION, peers_section(r, True))


def write_own_section(markdown: Path, name: str, section: str) -> None:
    previous = markdown.read_text() if markdown.is_file() else "# inferd benchmark results\n"
    markdown.write_text(sections.replace_section(previous, name, section))
