//! Mode `ledger`: the path's ledger calls timed in process.

use super::*;

/// Diagnosis: the ledger calls on the enqueue-to-start path, in this process, each after
/// the same idle pause as the end-to-end runs. Per run: the API's submission commit, then
/// the worker's `has_work` read, `reclaim` (a write transaction that finds nothing) and
/// the compile claim (`claim_work`); then (untimed) the rest of the run the way a worker
/// does it. Also the cost of one idle thread hop (`spawn_blocking` of nothing) and of one
/// `fdatasync` after overwriting 4 KiB in the state directory (the disk alone).
pub(super) fn run_ledger(args: &Args) -> Result<Vec<Measure>> {
    use machina_core::{Plan, TaskSpec};
    use machina_ledger::{CompiledPlan, Ledger, LedgerOptions, NewIntent, NewRun, Submission, TaskReport, Work};
    let dir = tempfile::Builder::new().prefix("machina-wake.").tempdir()?;
    registry().dirs.push(dir.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let state = dir.path().join("state");
    let lease_ms = 30_000;
    let result = rt.block_on(async {
        let mut opts = LedgerOptions::new(&state);
        if args.ledger_normal {
            opts.durability = machina_ledger::Durability::Normal;
        }
        let ledger = Ledger::open(opts)?;
        let p = ledger.pragmas();
        if p.journal_mode != "wal" || p.durable_commits == args.ledger_normal {
            bail!("the ledger is not WAL with the asked durability: {p:?}");
        }
        let mut file =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(state.join("fsync-probe"))?;
        let mut names = [
            "submit (the API's commit: intent + run)",
            "has_work (read)",
            "reclaim (write txn, nothing found)",
            "claim_work (the compile claim)",
            "**has_work + reclaim + claim_work** (worker, woken → start)",
            "idle thread hop: `spawn_blocking(noop)`",
            "`fdatasync` of a 4 KiB overwrite",
        ]
        .map(|n| (n, Vec::with_capacity(args.runs)));
        eprintln!(
            "== ledger: {} warmup + {} runs, settle {}-{} ms, in process, synchronous={}",
            args.warmup,
            args.runs,
            args.settle_ms.0,
            args.settle_ms.1,
            if args.ledger_normal { "NORMAL (experiment)" } else { "FULL" }
        );
        let mut rng = Rng::new();
        for i in 0..args.warmup + args.runs {
            if STOP.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
            tokio::time::sleep(Duration::from_millis(rng.range(args.settle_ms.0, args.settle_ms.1))).await;
            let intent = NewIntent {
                goal: format!("wake {i}"),
                inputs: serde_json::json!({}),
                constraints: serde_json::json!({}),
            };
            let run = NewRun {
                intent_id: String::new(),
                recipe: RECIPE.into(),
                partition_key: "default".into(),
                workload: serde_json::json!({}),
                concurrency: 1,
            };
            let t = Instant::now();
            ledger.submit(None, Submission::Enqueue(intent, run)).await?;
            let t_submit = Instant::now();
            if !ledger.has_work().await? {
                bail!("has_work says no after a submission");
            }
            let t_has = Instant::now();
            ledger.reclaim(None).await?;
            let t_reclaim = Instant::now();
            let Some(Work::Compile(job)) = ledger.claim_work("w1", lease_ms).await? else {
                bail!("claim_work did not return the compile");
            };
            let t_claim = Instant::now();
            // The rest of the run, as a worker does it (untimed).
            let spec = TaskSpec {
                name: "true".into(),
                tool: "shell".into(),
                argv: vec!["/usr/bin/true".into()],
                timeout_secs: 10,
                lease: None,
            };
            let plan = Plan { recipe: RECIPE.into(), concurrency: 1, tasks: vec![spec] };
            let sha = ledger.put_artifact(plan.canonical_bytes(), "application/json").await?;
            ledger
                .finish_compile(&job, "w1", Ok(CompiledPlan { plan, plan_sha256: sha, approval_required: false }))
                .await?;
            let Some(Work::Task(task)) = ledger.claim_work("w1", lease_ms).await? else {
                bail!("claim_work did not return the task");
            };
            let report = TaskReport {
                task_id: task.task_id,
                owner: "w1".into(),
                attempt: task.attempt,
                err_code: None,
                exit_status: Some(0),
                stdout_sha256: None,
                stderr_sha256: None,
                wall_ms: 1,
            };
            let (_, done) = ledger.complete_and_claim(report, lease_ms).await?;
            let done = done.await?;
            if done.run_status != machina_core::RunStatus::Succeeded {
                bail!("run ended {}", done.run_status);
            }
            tokio::time::sleep(Duration::from_millis(rng.range(args.settle_ms.0, args.settle_ms.1))).await;
            let h = Instant::now();
            tokio::task::spawn_blocking(|| ()).await?;
            let hop = h.elapsed();
            let (f, sync) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&[i as u8; 4096], 0)?;
                let s = Instant::now();
                file.sync_data()?;
                Ok((file, s.elapsed()))
            })
            .await??;
            file = f;
            if i >= args.warmup {
                let values = [
                    t_submit - t,
                    t_has - t_submit,
                    t_reclaim - t_has,
                    t_claim - t_reclaim,
                    t_claim - t_submit,
                    hop,
                    sync,
                ];
                for ((_, v), d) in names.iter_mut().zip(values) {
                    v.push(d);
                }
            }
        }
        Ok(names.to_vec())
    });
    drop(rt);
    registry().dirs.retain(|d| d != dir.path());
    result
}
