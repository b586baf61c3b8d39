//! Arbitration of a run about to compile while its partition has active runs
//! (`[arbitration]`): parallel, defer, abort, or ask the judge (falling back to
//! `arbitration.judge_fallback` when the judge is blocked or unavailable). The decision, its
//! reason and, from the judge, the model and the candidates skipped are recorded as the
//! run's `arbitration` event.

use machina_core::config::ArbitrationSettings;
use machina_ledger::{Arbitration, CompileJob, LedgerError, RunRecord};
use machina_planner::llm::{Judge, JudgeRequest};
use serde_json::{Value, json};

use crate::Worker;

/// The judge's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    decision: String,
    reason: String,
}

impl Worker {
    /// Decide for `job` and apply it; true when the compile goes on, false when the run was
    /// deferred (back in the queue).
    pub(crate) async fn arbitrate(&self, job: &CompileJob) -> Result<bool, LedgerError> {
        let cfg = &self.settings.arbitration;
        if !cfg.is_active() || job.rivals.is_empty() {
            return Ok(true);
        }
        let (decision, mut record) = match cfg.policy.as_str() {
            "judge" => self.ask_judge(job).await,
            policy => by_policy(policy, cfg, &job.rivals, format!("arbitration.policy = {policy:?}")),
        };
        let decision = capped(decision, cfg, &job.rivals, &mut record);
        record["policy"] = json!(cfg.policy);
        record["rivals"] = json!(job.rivals.iter().map(|r| &r.id).collect::<Vec<_>>());
        tracing::info!(run_id = %job.run.id, decision = machina_ledger::decision_name(&decision),
            reason = %record["reason"], "arbitration");
        let run = self.ledger.arbitrate(job, &self.id, decision.clone(), record).await?;
        if let Arbitration::Abort { victims } = &decision {
            // Slots of this process running the victims' tasks stop them now; other
            // processes hear RunStateChanged(canceled) below.
            self.cancels.notify_waiters();
            for v in victims {
                if let Ok(detail) = self.ledger.run_detail(v).await {
                    self.announce.state_changed(&detail.run).await;
                }
            }
        }
        Ok(run.status == machina_core::RunStatus::Compiling)
    }

    async fn ask_judge(&self, job: &CompileJob) -> (Arbitration, Value) {
        let cfg = &self.settings.arbitration;
        let fallback = |why: String, extra: Value| {
            let (d, mut rec) = by_policy(&cfg.judge_fallback, cfg, &job.rivals, why);
            rec["judge"] = extra;
            (d, rec)
        };
        let Some(judge) = self.judge.as_deref() else {
            return fallback(
                format!("no judge configured ([judge]); arbitration.judge_fallback = {:?}", cfg.judge_fallback),
                json!(null),
            );
        };
        match ask(judge, job).await {
            Ok((verdict, model, decision_record)) => {
                let d = match verdict.decision.as_str() {
                    "abort" => Arbitration::Abort { victims: job.rivals.iter().map(|r| r.id.clone()).collect() },
                    "defer" => Arbitration::Defer { behind: newest(&job.rivals) },
                    _ => Arbitration::Proceed,
                };
                (d, json!({"reason": verdict.reason, "model": model, "judge": decision_record}))
            }
            Err((code, message, decision_record)) => fallback(
                format!("judge failed with {code}: {message}; arbitration.judge_fallback = {:?}", cfg.judge_fallback),
                json!({"errCode": code, "decision": decision_record}),
            ),
        }
    }
}

type Asked = (Verdict, String, Value);

async fn ask(judge: &Judge, job: &CompileJob) -> Result<Asked, (String, String, Value)> {
    let rivals: Vec<Value> = job
        .rivals
        .iter()
        .map(|r| json!({"id": r.id, "recipe": r.recipe, "status": r.status, "createdAt": r.created_at}))
        .collect();
    let prompt = json!({
        "partition": job.run.queue_partition_key,
        "newRun": {"id": job.run.id, "recipe": job.run.recipe, "goal": job.intent.goal},
        "activeRuns": rivals,
        "choices": {
            "abort": "cancel the active runs (their running tasks are stopped) and start the new run",
            "defer": "queue the new run until the newest active run has finished",
            "parallel": "run the new run beside the active ones",
        },
    });
    let req = JudgeRequest {
        purpose: "arbitrate".into(),
        system: "You arbitrate work for machina, a supervisor of sandboxed agent tasks. New work arrived \
                 for a partition that already has active runs. Answer only with JSON: \
                 {\"decision\": \"abort\" | \"defer\" | \"parallel\", \"reason\": \"one sentence\"}."
            .into(),
        prompt: prompt.to_string(),
        schema: Some(json!({
            "type": "object",
            "properties": {
                "decision": {"type": "string", "enum": ["abort", "defer", "parallel"]},
                "reason": {"type": "string"},
            },
            "required": ["decision", "reason"],
            "additionalProperties": false,
        })),
    };
    let validate = |v: &Value| -> Result<Verdict, String> {
        let decision = v["decision"].as_str().ok_or("no \"decision\" string")?;
        if !["abort", "defer", "parallel"].contains(&decision) {
            return Err(format!("decision {decision:?} is not abort, defer or parallel"));
        }
        let reason = v["reason"].as_str().unwrap_or("").chars().take(500).collect();
        Ok(Verdict { decision: decision.to_string(), reason })
    };
    match judge.ask(&req, validate).await {
        Ok(j) => Ok((j.value, j.model, serde_json::to_value(&j.decision).unwrap_or_default())),
        Err(f) => {
            let d = serde_json::to_value(f.decision()).unwrap_or_default();
            Err((f.err_code().as_str().to_string(), f.to_string(), d))
        }
    }
}

/// The decision a fixed policy makes.
fn by_policy(policy: &str, _cfg: &ArbitrationSettings, rivals: &[RunRecord], reason: String) -> (Arbitration, Value) {
    let d = match policy {
        "abort" => Arbitration::Abort { victims: rivals.iter().map(|r| r.id.clone()).collect() },
        "defer" => Arbitration::Defer { behind: newest(rivals) },
        _ => Arbitration::Proceed,
    };
    (d, json!({"reason": reason}))
}

/// A parallel decision over the partition's cap defers instead.
fn capped(d: Arbitration, cfg: &ArbitrationSettings, rivals: &[RunRecord], record: &mut Value) -> Arbitration {
    let active = rivals.len() as u32 + 1;
    if d == Arbitration::Proceed && cfg.max_parallel_runs > 0 && active > cfg.max_parallel_runs {
        record["reason"] = json!(format!(
            "{}; but the partition would have {active} active runs, over arbitration.max_parallel_runs = {}: deferred",
            record["reason"].as_str().unwrap_or(""),
            cfg.max_parallel_runs
        ));
        return Arbitration::Defer { behind: newest(rivals) };
    }
    d
}

fn newest(rivals: &[RunRecord]) -> String {
    rivals.last().map(|r| r.id.clone()).unwrap_or_default()
}
