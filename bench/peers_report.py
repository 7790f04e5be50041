"""Section (i) of bench/RESULTS.md: inferd beside LitServe, from the figures bench/peers.py measured."""

from __future__ import annotations

from bench import sections
from bench.markdown import fmt, load_cell, own_run_note, table
from bench.peers import INPUT_SIZE, PEER
from bench.results import BenchResults

SECTION = "peers"
ROLES = ("api", "workers", "redis", "front door", "other")


def peers_section(r: BenchResults, standalone: bool) -> str:
    """(i) as a named section; `standalone`: from a run of this phase alone, so it says which run."""
    out = [sections.start_marker(SECTION), "## (i) inferd beside LitServe on the same work", ""]
    if standalone:
        out += [own_run_note(r.meta), ""]
    out += [
        f"The tiny test model built at {INPUT_SIZE}x{INPUT_SIZE}, the 451x300 JPEG, the same decode, resize, "
        "normalisation and top-5 (bench/litserve_peer.py calls daemon/imaging.py and daemon/model.py), "
        f"adaptive batching on in both. Settings: {r.meta.get('peers_setup', '-')}. {PEER}: "
        f"{r.meta.get('peers_software', '-')}, one inference worker per core, as many API servers. wrk on "
        "the same cores. One system is loaded at a time: the other is idle, and LitServe, whose idle "
        "processes poll, is stopped (SIGSTOP) outside its turns. Rounds alternate between the systems; each "
        "keeps its best. Cells: req/s (p50 / p99 ms).",
        "",
    ]
    skipped = r.meta.get("peers_skipped")
    if skipped:
        out += [f"Skipped: {skipped}.", ""]
    counts = sorted({p.clients for p in r.peers})
    rows = []
    for clients in counts:
        inferd, peer = r.peer_load("inferd", clients), r.peer_load(PEER, clients)
        ratio = inferd.rps / peer.rps if inferd and peer and peer.rps else None
        rows.append([str(clients), load_cell(inferd), load_cell(peer), fmt(ratio, 2, "x")])
    if rows:
        out += table(["clients", "inferd", PEER, f"inferd / {PEER}"], rows)
        roles = [role for role in ROLES if any(role in p.cpu_ms_per_request for p in r.peers)]
        out += [
            "CPU milliseconds per served request by role, in the kept round (utime + stime from "
            "/proc/<pid>/stat of every process of the system; wrk's own CPU is not counted). inferd's api "
            f"is its gunicorn processes (upload, decode, queueing), {PEER}'s its uvicorn API servers (upload "
            "parsing, queueing); workers are the model processes (for the peer they decode as well). Cores "
            "used = all x req/s: on a shared machine a system's req/s follows the share of the cores it gets, "
            "CPU per request does not.",
            "",
        ]
        out += table(
            ["system", "clients", *roles, "all", "cores used"],
            [
                [
                    p.system,
                    str(p.clients),
                    *(fmt(p.cpu_ms_per_request.get(role), 2) for role in roles),
                    fmt(sum(p.cpu_ms_per_request.values()), 2),
                    fmt(sum(p.cpu_ms_per_request.values()) * p.result.rps / 1000.0, 2),
                ]
                for p in sorted(r.peers, key=lambda p: (p.system != "inferd", p.clients))
            ],
        )
    out += [sections.end_marker(SECTION)]
    return "\n".join(out) + "\n"


def summary_lines(r: BenchResults) -> list[str]:
    return [
        f"peers {p.system} c={p.clients}: {p.result.rps:.1f} req/s p50 {p.result.p50_ms:.1f} ms "
        f"p99 {p.result.p99_ms:.1f} ms, CPU {sum(p.cpu_ms_per_request.values()):.1f} ms/req"
        for p in r.peers
    ]
