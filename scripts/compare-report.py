#!/usr/bin/env python3
"""Turns scripts/compare.sh results into a markdown report and an SVG chart.

    compare-report.py RESULTS_DIR OUT.md OUT.svg

RESULTS_DIR holds <case>.<system>.r<round>.json files from metcd-bench (each with a .cpu file
beside it: the servers' CPU seconds during the run), memory.txt and machine.txt. Every figure
is a median over rounds; ratios are over etcd's, spoken to over its native gRPC API.
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
    ("watch-1000", "1,000 watchers, PUTs at 100/s"),
]
# In the order of the report's columns; the baseline is etcd over its native gRPC API.
SYSTEMS = [
    ("metcd-grpc", "metcd (gRPC)"),
    ("metcd", "metcd (HTTP)"),
    ("etcd-grpc", "etcd (gRPC)"),
    ("etcd-v3", "etcd v3 gateway"),
    ("etcd-v2", "etcd v2 API"),
]
BASELINE = "etcd-grpc"
COLORS = {"metcd-grpc": "#2b6cb0", "metcd": "#63b3ed", "etcd-grpc": "#dd6b20",
          "etcd-v3": "#f6ad55", "etcd-v2": "#a0aec0"}


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


def present(runs):
    """The systems that have results, in column order."""
    return [(s, label) for s, label in SYSTEMS if any(k[1] == s for k in runs)]


def svg_chart(runs, path):
    """Grouped horizontal bars, throughput on a log scale."""
    systems = present(runs)
    cases = [(c, label) for c, label in CASES if c != "watch-1000" and any((c, s) in runs for s, _ in systems)]
    row, bar, left, width, top = 20 + 16 * len(systems), 14, 230, 560, 40
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
        for j, (system, _) in enumerate(systems):
            v = med(runs.get((case, system), []), "tput")
            if v is None:
                continue
            y = y0 + 4 + j * (bar + 2)
            out.append(f'<rect x="{left}" y="{y}" width="{x(v) - left:.1f}" height="{bar}" fill="{COLORS[system]}"/>')
            out.append(f'<text x="{x(v) + 4:.1f}" y="{y + bar - 3}" fill="#333">{v:,.0f}</text>')
    ly = top + row * len(cases) + 32
    for j, (system, label) in enumerate(systems):
        lx = left + j * 140
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
    systems = present(runs)
    others = [(s, label) for s, label in systems if s != BASELINE]
    base = dict(SYSTEMS)[BASELINE]
    lines = ["# metcd and etcd, side by side", "",
             "Generated by `scripts/compare.sh` (see that script for the exact settings); do not edit by hand.", "",
             "Machine and run:", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", f"Each figure is the median of {rounds} rounds. Ratios are over {base}, etcd's native API, "
              "driven by the same gRPC client code as metcd (gRPC). Latencies in milliseconds, as the client saw them.", "",
              f"![throughput chart]({os.path.basename(svg_path)})", "",
              "| case | " + " | ".join(f"{label} req/s" for _, label in systems)
              + " | " + " | ".join(f"{label} / {base}" for _, label in others)
              + " | " + " | ".join(f"p99 {label}" for _, label in systems) + " | errors (all runs) |",
              "|---|" + "---:|" * (2 * len(systems) + len(others) + 1)]
    for case, label in CASES:
        if case == "watch-1000":
            continue
        rs = {s: runs.get((case, s), []) for s, _ in systems}
        if not any(rs.values()):
            continue
        errors = sum(r["errors"] for v in rs.values() for r in v)
        cells = [fmt_rate(med(rs[s], "tput")) for s, _ in systems]
        cells += [fmt_ratio(ratio(med(rs[s], "tput"), med(rs.get(BASELINE, []), "tput"))) for s, _ in others]
        cells += [fmt_ms(med(rs[s], "p99")) for s, _ in systems]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {errors} |")

    watch = {s: runs.get(("watch-1000", s), []) for s, _ in systems}
    if any(watch.values()):
        lines += ["", "## Watch fan-out", "",
                  "1,000 watch streams on one prefix (spread over the three members) while 8 clients PUT under it "
                  "at 100/s in all: events delivered per second, delivery latency from the PUT being sent to the "
                  "event being read, and the members' resident memory per open watcher (VmRSS after opening the "
                  "streams, less before, over 1,000).", "",
                  "| system | events/s | delivered | delivery p50 ms | p99 ms | KiB per watcher |",
                  "|---|---:|---:|---:|---:|---:|"]
        for s, label in systems:
            w = [r for r in watch[s] if r.get("watch")]
            if not w:
                continue
            eps = statistics.median(r["watch"]["events_per_second"] for r in w)
            share = statistics.median(r["watch"]["delivered"] / max(r["watch"]["expected"], 1) for r in w)
            p50 = statistics.median(r["watch"]["delivery_latency_ms"]["p50"] for r in w)
            p99 = statistics.median(r["watch"]["delivery_latency_ms"]["p99"] for r in w)
            kib = [r["watch"]["kib_per_watcher_open"] for r in w if r["watch"].get("kib_per_watcher_open") is not None]
            lines.append(f"| {label} | {eps:,.0f} | {100 * share:.1f}% | {fmt_ms(p50)} | {fmt_ms(p99)} "
                         f"| {'–' if not kib else f'{statistics.median(kib):.1f}'} |")

    lines += ["", "## Targets (issue 18)", "", "| target | measured | met? |", "|---|---|---|"]
    for case, want, what in (("put-64", 3, "PUT"), ("lget-64", 4, "linearizable GET")):
        m, e = runs.get((case, "metcd-grpc"), []), runs.get((case, BASELINE), [])
        r = ratio(med(m, "tput"), med(e, "tput"))
        p_m, p_e = med(m, "p99"), med(e, "p99")
        if r is not None:
            ok = r >= want and p_m is not None and p_e is not None and p_m <= p_e
            lines.append(f"| {what} at 64 clients ≥ {want}× etcd over gRPC, p99 lower | {r:.1f}× (rounds: "
                         f"{fmt_round_ratios(m, e)}), p99 {fmt_ms(p_m)} vs {fmt_ms(p_e)} ms | {'yes' if ok else 'no'} |")
    if memory.get("metcd") and memory.get("etcd"):
        mm = [int(x) for x in memory["metcd"].split()]
        em = [int(x) for x in memory["etcd"].split()]
        ok = max(mm) <= min(em)
        lines.append(f"| resident memory per member after {memory.get('metcd_keys', '?')} keys lower than etcd's "
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
              "| case | " + " | ".join(label for _, label in systems)
              + " | " + " | ".join(f"{base} / {label}" for _, label in others) + " |",
              "|---|" + "---:|" * (len(systems) + len(others))]
    for case, label in CASES:
        if case == "watch-1000":
            continue
        cpu = {s: med(runs.get((case, s), []), "cpu_us") for s, _ in systems}
        if all(v is None for v in cpu.values()):
            continue
        cells = [fmt_rate(cpu[s]) for s, _ in systems]
        cells += [fmt_ratio(ratio(cpu.get(BASELINE), cpu[s])) for s, _ in others]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    lines += ["", "## Every run", "", "Throughput per round (req/s), in the order the rounds ran.", "",
              "| case | " + " | ".join(label for _, label in systems) + " |", "|---|" + "---:|" * len(systems)]
    for case, label in CASES:
        cells = []
        for s, _ in systems:
            cells.append(", ".join(f"{r['throughput']:,.0f}" for r in runs.get((case, s), [])) or "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    svg_chart(runs, svg_path)


if __name__ == "__main__":
    main()
