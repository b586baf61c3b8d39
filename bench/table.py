"""Print the benchmark JSON lines (stdin) as tables with ratios against the better peer."""
import json
import statistics
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
sweep = [r for r in rows if r.get("phase") == "enqueue"]
rows = [r for r in rows if r.get("phase") != "enqueue"]
queues = [r for r in rows if "enqueue_jobs_per_s" in r]
unfinished = [r for r in rows if r.get("dnf")]
http = [r for r in rows if r.get("system") == "machina-http"]
peers = [r for r in queues if r["system"] != "machina"]
best_enq = max((p["enqueue_jobs_per_s"] for p in peers), default=None)
best_proc = max((p["process_jobs_per_s"] for p in peers), default=None)

def ratio(v, best):
    return f"{v / best:.2f}x" if best else "-"

if queues or unfinished:
    print(f"\njobs: {queues[0]['jobs'] if queues else '?'}, durability: every acknowledged write on disk (WAL; FULL, or machina's own fdatasync), 64 submitters, 4 consumers\n")
    print(f"| system | enqueue jobs/s | vs best peer | process jobs/s | vs best peer | claim→complete p50 | p99 |")
    print(f"|---|---:|---:|---:|---:|---:|---:|")
    for r in queues:
        print(f"| {r['system']} | {r['enqueue_jobs_per_s']:,.0f} | {ratio(r['enqueue_jobs_per_s'], best_enq)} "
              f"| {r['process_jobs_per_s']:,.0f} | {ratio(r['process_jobs_per_s'], best_proc)} "
              f"| {r['latency_p50_us'] / 1000:.2f} ms | {r['latency_p99_us'] / 1000:.2f} ms |")
    for r in unfinished:
        print(f"| {r['system']} | did not finish within {r['timeout_s']} s | | | | | |")
for r in http:
    print(f"\nHTTP POST /enqueue (intent + run per request), wrk -c64 on loopback: "
          f"{r['requests_per_s']:,.0f} req/s, p50 {r['latency_p50_us'] / 1000:.2f} ms, "
          f"p99 {r['latency_p99_us'] / 1000:.2f} ms, non-2xx {r['non_2xx']}, runs created {r['runs_created']:,}")
for r in rows:
    if r.get("notes"):
        print(f"\nnote ({r['system']}): {r['notes']}")

if sweep:
    # Median of each (system, submitters) point; each system's peak is its best point.
    points = {}
    for r in sweep:
        points.setdefault((r["system"], r["submitters"]), []).append(r["enqueue_jobs_per_s"])
    systems = list(dict.fromkeys(r["system"] for r in sweep))
    counts = sorted({s for _, s in points})
    median = {k: statistics.median(v) for k, v in points.items()}
    peak = {sy: max(v for (s2, _), v in median.items() if s2 == sy) for sy in systems}
    best_peer = max((v for sy, v in peak.items() if sy != "machina"), default=None)
    reps = max(len(v) for v in points.values())
    print(f"\nDurable enqueue against concurrency (one job per call, {sweep[0]['jobs']:,} jobs, "
          f"jobs/s, median of up to {reps} runs):\n")
    print("| submitters | " + " | ".join(systems) + " | machina vs best peer at this point |")
    print("|---:|" + "---:|" * len(systems) + "---:|")
    for c in counts:
        cells = [f"{median[(sy, c)]:,.0f}" if (sy, c) in median else "-" for sy in systems]
        peers_here = [median[(sy, c)] for sy in systems if sy != "machina" and (sy, c) in median]
        vs = ratio(median[("machina", c)], max(peers_here)) if ("machina", c) in median and peers_here else "-"
        print(f"| {c} | " + " | ".join(cells) + f" | {vs} |")
    cells = [f"**{peak[sy]:,.0f}**" for sy in systems]
    print("| peak | " + " | ".join(cells) + f" | **{ratio(peak.get('machina', 0), best_peer)}** (peak vs peak) |")

# The target, machina >= 2x the better peer at equal durability, phase by phase.
checks = []
machina = next((r for r in queues if r["system"] == "machina"), None)
if machina and best_proc:
    checks.append(("processing, 4 consumers", machina["process_jobs_per_s"] / best_proc))
if sweep and best_peer and "machina" in peak:
    checks.append(("durable enqueue, each system at its best concurrency", peak["machina"] / best_peer))
if checks:
    print("\nTarget (machina >= 2x the better peer, same durability):\n")
    for what, x in checks:
        print(f"- {what}: {x:.2f}x ({'met' if x >= 2 else 'NOT met'})")
    if machina and best_enq:
        print(f"- for reference, durable enqueue at 64 submitters: {machina['enqueue_jobs_per_s'] / best_enq:.2f}x "
              "(a closed loop of 64 clients each awaiting its own fdatasync: no system passes 64 jobs per sync)")
