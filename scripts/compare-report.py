#!/usr/bin/env python3
"""Turns scripts/compare.sh results into a markdown report and an SVG chart.

    compare-report.py RESULTS_DIR OUT.md OUT.svg

RESULTS_DIR holds <case>.<system>.r<round>.json files from metcd-bench (each with a .cpu file
beside it: the servers' CPU seconds during the run), memory.txt and machine.txt. Every figure
is a median over rounds; ratios are metcd's median over etcd's.
Standard library only.
"""
import json
import math
import os
import statistics
import sys
from collections import defaultdict

CASES = [
    ("put-1", "PUT, 1 client"),
    ("put-64", "PUT, 64 clients"),
    ("put-256", "PUT, 256 clients"),
    ("lget-1", "linearizable GET, 1 client"),
    ("lget-64", "linearizable GET, 64 clients"),
    ("lget-256", "linearizable GET, 256 clients"),
    ("sget-1", "serializable GET, 1 client"),
    ("sget-64", "serializable GET, 64 clients"),
    ("sget-256", "serializable GET, 256 clients"),
    ("mix-64", "90% GET / 10% PUT, 64 clients"),
]
SYSTEMS = [("metcd", "metcd"), ("etcd-v3", "etcd v3 gateway"), ("etcd-v2", "etcd v2 API")]
COLORS = {"metcd": "#2b6cb0", "etcd-v3": "#dd6b20", "etcd-v2": "#a0aec0"}


def load(results):
    runs = defaultdict(list)  # (case, system) -> [report]
    for name in sorted(os.listdir(results)):
        parts = name.split(".")
        if len(parts) == 4 and parts[3] == "json" and parts[2].startswith("r"):
            with open(os.path.join(results, name)) as f:
                report = json.load(f)
            cpu = kv_lines(os.path.join(results, name[: -len(".json")] + ".cpu"))
            if "server_cpu_seconds" in cpu and report["requests"]:
                report["cpu_us"] = float(cpu["server_cpu_seconds"]) * 1e6 / report["requests"]
            runs[(parts[0], parts[1])].append(report)
    return runs


def kv_lines(path):
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                key, _, value = line.strip().partition(" ")
                if key:
                    out[key] = value
    return out


def med(runs, key):
    if key == "cpu_us":
        vals = [r["cpu_us"] for r in runs if "cpu_us" in r]
    else:
        vals = [r["throughput"] if key == "tput" else r["latency_ms"][key] for r in runs]
    return statistics.median(vals) if vals else None


def fmt_round_ratios(m, e):
    """metcd over etcd in each round (the systems ran minutes apart at most within a round)."""
    return ", ".join(f"{a['throughput'] / b['throughput']:.1f}×" for a, b in zip(m, e) if b["throughput"])


def fmt_rate(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    return "–" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def ratio(a, b):
    return None if a is None or not b else a / b


def fmt_ratio(v):
    return "–" if v is None else f"{v:.1f}×"


def svg_chart(runs, path):
    """Grouped horizontal bars, throughput on a log scale."""
    cases = [(c, label) for c, label in CASES if any((c, s) in runs for s, _ in SYSTEMS)]
    row, bar, left, width, top = 54, 14, 230, 560, 40
    lo, hi = 100, 10 ** math.ceil(math.log10(max(
        [med(v, "tput") or 1 for v in runs.values()] + [1000])))
    x = lambda v: left + width * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    height = top + row * len(cases) + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14" font-weight="bold">Throughput (requests/s, log scale; '
           'median of rounds), 3-member clusters</text>']
    d = lo
    while d <= hi:
        out.append(f'<line x1="{x(d):.1f}" y1="{top - 5}" x2="{x(d):.1f}" y2="{top + row * len(cases)}" stroke="#ddd"/>')
        out.append(f'<text x="{x(d):.1f}" y="{top + row * len(cases) + 15}" text-anchor="middle" fill="#555">{d:,}</text>')
        d *= 10
    for i, (case, label) in enumerate(cases):
        y0 = top + i * row
        out.append(f'<text x="{left - 8}" y="{y0 + row / 2}" text-anchor="end">{label}</text>')
        for j, (system, _) in enumerate(SYSTEMS):
            v = med(runs.get((case, system), []), "tput")
            if v is None:
                continue
            y = y0 + 4 + j * (bar + 2)
            out.append(f'<rect x="{left}" y="{y}" width="{x(v) - left:.1f}" height="{bar}" fill="{COLORS[system]}"/>')
            out.append(f'<text x="{x(v) + 4:.1f}" y="{y + bar - 3}" fill="#333">{v:,.0f}</text>')
    ly = top + row * len(cases) + 32
    for j, (system, label) in enumerate(SYSTEMS):
        lx = left + j * 170
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLORS[system]}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    results, md_path, svg_path = sys.argv[1:4]
    runs = load(results)
    machine = kv_lines(os.path.join(results, "machine.txt"))
    memory = kv_lines(os.path.join(results, "memory.txt"))
    rounds = max((len(v) for v in runs.values()), default=0)
    lines = ["# metcd and etcd, side by side", "",
             "Generated by `scripts/compare.sh` (see that script for the exact settings); do not edit by hand.", "",
             "Machine and run:", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", f"Each figure is the median of {rounds} rounds. Ratios are metcd over etcd. "
              "Latencies in milliseconds, as the client saw them.", "",
              f"![throughput chart]({os.path.basename(svg_path)})", "",
              "| case | metcd req/s | etcd v3 req/s | etcd v2 req/s | metcd / v3 | metcd / v2 "
              "| p99 metcd | p99 etcd v3 | p99 etcd v2 | errors (all runs) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, label in CASES:
        m, v3, v2 = (runs.get((case, s), []) for s, _ in SYSTEMS)
        if not (m or v3 or v2):
            continue
        errors = sum(r["errors"] for rs in (m, v3, v2) for r in rs)
        lines.append(
            f"| {label} | {fmt_rate(med(m, 'tput'))} | {fmt_rate(med(v3, 'tput'))} | {fmt_rate(med(v2, 'tput'))} "
            f"| {fmt_ratio(ratio(med(m, 'tput'), med(v3, 'tput')))} | {fmt_ratio(ratio(med(m, 'tput'), med(v2, 'tput')))} "
            f"| {fmt_ms(med(m, 'p99'))} | {fmt_ms(med(v3, 'p99'))} | {fmt_ms(med(v2, 'p99'))} | {errors} |")

    lines += ["", "## Targets (issue 6)", "",
              "| target | measured | met? |", "|---|---|---|"]
    m, v3, v2 = (runs.get(("put-64", s), []) for s, _ in SYSTEMS)
    for name, e in (("v3 gateway", v3), ("v2 API", v2)):
        r = ratio(med(m, "tput"), med(e, "tput"))
        p_m, p_e = med(m, "p99"), med(e, "p99")
        if r is not None:
            ok = r >= 4 and p_m is not None and p_e is not None and p_m <= p_e
            lines.append(f"| PUT at 64 clients ≥ 4× etcd ({name}), p99 no worse | {r:.1f}× (rounds: {fmt_round_ratios(m, e)}), "
                         f"p99 {fmt_ms(p_m)} vs {fmt_ms(p_e)} ms | {'yes' if ok else 'no'} |")
    m, v3, v2 = (runs.get(("lget-64", s), []) for s, _ in SYSTEMS)
    for name, e in (("v3 gateway", v3), ("v2 API", v2)):
        r = ratio(med(m, "tput"), med(e, "tput"))
        if r is not None:
            lines.append(f"| linearizable GET at 64 clients ≥ 4× etcd ({name}) | {r:.1f}× (rounds: {fmt_round_ratios(m, e)}) "
                         f"| {'yes' if r >= 4 else 'no'} |")
    if memory.get("metcd") and memory.get("etcd"):
        mm = [int(x) for x in memory["metcd"].split()]
        em = [int(x) for x in memory["etcd"].split()]
        ok = max(mm) <= min(em)
        lines.append(f"| resident memory per member after {memory.get('metcd_keys', '?')} keys ≤ etcd's "
                     f"| metcd {', '.join(map(str, mm))} MiB; etcd {', '.join(map(str, em))} MiB | {'yes' if ok else 'no'} |")
        lines += ["", "## Memory and disk after loading", "",
                  f"- keys: metcd {memory.get('metcd_keys', '?')}, etcd {memory.get('etcd_keys', '?')}",
                  f"- resident memory (VmRSS) per member: metcd {', '.join(map(str, mm))} MiB; "
                  f"etcd {', '.join(map(str, em))} MiB",
                  f"- data directories, all three members: metcd {memory.get('metcd_disk_mib', '?')} MiB; "
                  f"etcd {memory.get('etcd_disk_mib', '?')} MiB"]

    lines += ["", "## Servers' CPU per request", "",
              "CPU time (user + system, all threads) of a system's three servers during a run, divided by the "
              "requests answered; median of rounds, in µs. The client shares the machine's cores, and takes "
              "more of them the faster the system answers, so throughput ratios understate the servers' "
              "difference on this machine; CPU per request does not depend on it.", "",
              "| case | metcd | etcd v3 | etcd v2 | etcd v3 / metcd | etcd v2 / metcd |",
              "|---|---:|---:|---:|---:|---:|"]
    for case, label in CASES:
        m, v3, v2 = (med(runs.get((case, s), []), "cpu_us") for s, _ in SYSTEMS)
        if m is None and v3 is None and v2 is None:
            continue
        lines.append(f"| {label} | {fmt_rate(m)} | {fmt_rate(v3)} | {fmt_rate(v2)} "
                     f"| {fmt_ratio(ratio(v3, m))} | {fmt_ratio(ratio(v2, m))} |")

    lines += ["", "## Every run", "", "Throughput per round (req/s), in the order the rounds ran.", "",
              "| case | " + " | ".join(label for _, label in SYSTEMS) + " |", "|---|---:|---:|---:|"]
    for case, label in CASES:
        cells = []
        for s, _ in SYSTEMS:
            cells.append(", ".join(f"{r['throughput']:,.0f}" for r in runs.get((case, s), [])) or "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    svg_chart(runs, svg_path)


if __name__ == "__main__":
    main()
