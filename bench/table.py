"""Print the benchmark JSON lines (stdin) as tables with ratios against the better peer."""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip().startswith("{")]
queues = [r for r in rows if "enqueue_jobs_per_s" in r]
unfinished = [r for r in rows if r.get("dnf")]
http = [r for r in rows if r.get("system") == "machina-http"]
peers = [r for r in queues if r["system"] != "machina"]
best_enq = max((p["enqueue_jobs_per_s"] for p in peers), default=None)
best_proc = max((p["process_jobs_per_s"] for p in peers), default=None)

def ratio(v, best):
    return f"{v / best:.2f}x" if best else "-"

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
