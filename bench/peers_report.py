"""Section (i) of bench/RESULTS.md: inferd beside its peers, from the figures bench/peers.py measured."""

from __future__ import annotations

from bench import sections
from bench.markdown import fmt, load_cell, own_run_note, table
from bench.peers import INPUT_SIZE, PEERS
from bench.results import BenchResults

SECTION = "peers"
ROLES = ("api", "workers", "redis", "front door", "other")


def peers_section(r: BenchResults, standalone: bool) -> str:
    """(i) as a named section; `standalone`: from a run of this phase alone, so it says which run."""
    out = [sections.start_marker(SECTION), "## (i) inferd beside LitServe and BentoML on the same work", ""]
    if standalone:
        out += [own_run_note(r.meta), ""]
    layouts = {peer.name: peer.layout for peer in PEERS}
    software = r.meta.get("peers_software", {})
    out += [
        f"The tiny test model built at {INPUT_SIZE}x{INPUT_SIZE}, the 451x300 JPEG, the same decode, resize, "
        "normalisation and top-5 (bench/litserve_peer.py and bench/bentoml_peer.py call daemon/images/decode.py and "
        "daemon/model/classifier.py), adaptive batching on in every system, the peers with one model worker per core. "
        f"Settings: {r.meta.get('peers_setup', '-')}. "
        + " ".join(f"{name} ({version}): {layouts.get(name, '-')}." for name, version in software.items())
        + " wrk on the same cores. One system is loaded at a time: inferd idles in blocking reads, the "
        "peers, whose idle processes poll, are stopped (SIGSTOP) outside their turns. Rounds alternate "
        "between the systems; each keeps its best. Cells: req/s (p50 / p99 ms).",
        "",
    ]
    for reason in r.meta.get("peers_missing", []):
        out += [f"Left out: {reason}.", ""]
    if r.meta.get("peers_skipped"):
        out += ["Skipped: no peer is installed.", ""]
    systems = r.peer_systems()
    rows = []
    for clients in sorted({p.clients for p in r.peers}):
        inferd = r.peer_load("inferd", clients)
        cells, ratios = [], []
        for system in systems:
            peer = r.peer_load(system, clients)
            cells.append(load_cell(peer))
            ratios.append(fmt(inferd.rps / peer.rps if inferd and peer and peer.rps else None, 2, "x"))
        rows.append([str(clients), load_cell(inferd), *cells, *ratios])
    if rows:
        out += table(["clients", "inferd", *systems, *(f"inferd / {s}" for s in systems)], rows)
        order = ["inferd", *systems]
        roles = [role for role in ROLES if any(role in p.cpu_ms_per_request for p in r.peers)]
        out += [
            "CPU milliseconds per served request by role, in the kept round (utime + stime from "
            "/proc/<pid>/stat of every process of the system; wrk's own CPU is not counted). inferd's api "
            "is its gunicorn processes (upload, decode, queueing), a peer's its processes other than the model "
            "workers and the launcher; workers are the model processes (the peers' decode as well). Cores "
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
                for p in sorted(r.peers, key=lambda p: (order.index(p.system), p.clients))
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
