//! Prometheus exposition computed from the ledger, so counters survive restarts and idle exits.

use machina_ledger::Stats;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn label(k: &str, v: &str) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// Render the stats as OpenMetrics text.
pub(crate) fn render(s: &Stats) -> String {
    let mut reg = Registry::with_prefix("machina");
    let runs = Family::<Labels, Gauge>::default();
    for (status, n) in &s.runs {
        runs.get_or_create(&vec![label("status", status)]).set(*n);
    }
    reg.register("runs", "Runs by status", runs);
    let tasks = Family::<Labels, Gauge>::default();
    for (status, n) in &s.tasks {
        tasks.get_or_create(&vec![label("status", status)]).set(*n);
    }
    reg.register("tasks", "Tasks by status", tasks);
    let attempts = Family::<Labels, Counter>::default();
    for (outcome, code, n) in &s.attempts {
        attempts.get_or_create(&vec![label("outcome", outcome), label("err_code", code)]).inc_by(*n as u64);
    }
    reg.register("task_attempts", "Task attempts by outcome and error code", attempts);
    let events = Counter::<u64>::default();
    events.inc_by(s.events as u64);
    reg.register("events", "Run events recorded", events);
    let artifacts = Gauge::<i64>::default();
    artifacts.set(s.artifacts.0);
    reg.register("artifacts", "Content-addressed artifacts stored", artifacts);
    let bytes = Gauge::<i64>::default();
    bytes.set(s.artifacts.1);
    reg.register("artifact_bytes", "Bytes of stored artifacts", bytes);
    let dedup = Gauge::<i64>::default();
    dedup.set(s.dedup_entries);
    reg.register("dedup_entries", "Request ids whose responses are replayed", dedup);
    let dup = Gauge::<i64>::default();
    dup.set(s.duplicate_receipts);
    reg.register("duplicate_receipts", "Effects committed more than once (must be 0)", dup);
    let info = Family::<Labels, Gauge>::default();
    info.get_or_create(&vec![label("version", machina_core::APP_VERSION)]).set(1);
    reg.register("build_info", "Build information", info);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
