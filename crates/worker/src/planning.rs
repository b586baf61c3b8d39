//! CompileST's plan sources: the recipe's templates, the external policy driver, or the
//! judge's models. Every plan, whatever its source, must name its recipe and pass the
//! recipe's checks (caps on steps and concurrency, allowed tools) before it is stored; the
//! plan artifact and its sha256 are what an approval binds to.

use machina_core::recipe::Workload;
use machina_core::{ErrCode, Plan, Recipe};
use machina_ledger::CompileJob;
use machina_planner::llm::JudgeRequest;
use serde_json::{Value, json};

use crate::Worker;

type PlanResult = Result<Plan, (ErrCode, String)>;

impl Worker {
    /// The plan of `job` from `recipe`'s planner, checked against the recipe.
    pub(crate) async fn plan_for(&self, recipe: &Recipe, job: &CompileJob, w: &Workload) -> PlanResult {
        let invalid = |m: String| (ErrCode::PlanInvalid, m);
        let plan = match recipe.planner.as_str() {
            "driver" => self.plan_from_driver(recipe, job).await?,
            "llm" => self.plan_from_llm(recipe, job, w).await?,
            _ => return recipe.render(&job.intent.inputs, w).map_err(|e| invalid(e.to_string())),
        };
        check(recipe, &plan, w)?;
        Ok(plan)
    }

    async fn plan_from_driver(&self, recipe: &Recipe, job: &CompileJob) -> PlanResult {
        let Some(driver) = self.driver.clone() else {
            return Err((
                ErrCode::DriverFail,
                format!(
                    "recipe {:?} takes its plan from the policy driver, but [driver] command is not configured",
                    recipe.name
                ),
            ));
        };
        let dir = self.settings.state_dir.join("planner").join(format!("{}-{}", job.run.id, job.compile_attempt));
        let made = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)
            })
            .await
        };
        if let Err(e) | Ok(Err(e)) = made.map_err(std::io::Error::other) {
            return Err((ErrCode::BootFail, format!("cannot prepare the driver's directory {}: {e}", dir.display())));
        }
        let input = json!({"intent": intent_doc(job), "recipe": recipe, "run": {"id": job.run.id, "workload": job.run.workload}});
        let out = driver.plan(&input, &dir).await.map_err(|e| (e.err_code(), e.to_string()));
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        let plan = out?;
        let _ = self.ledger.record_event(&job.run.id, "plan_source", json!({"source": "driver"})).await;
        Ok(plan)
    }

    async fn plan_from_llm(&self, recipe: &Recipe, job: &CompileJob, w: &Workload) -> PlanResult {
        let Some(judge) = self.judge.as_deref() else {
            return Err((
                ErrCode::AutonomyJudgeUnavailable,
                format!("recipe {:?} takes its plan from an LLM, but no judge is configured ([judge])", recipe.name),
            ));
        };
        let req = JudgeRequest {
            purpose: "plan".into(),
            system: format!(
                "You plan work for machina, a supervisor of sandboxed agent tasks. Turn the intent into a plan of \
                 tasks. Answer only with JSON matching the schema: recipe must be {:?}; at most {} tasks; \
                 concurrency at most {}; each task's tool one of {:?}; argv is an executable's absolute path and \
                 its arguments (never a shell string); timeout_secs a positive integer.",
                recipe.name, recipe.max_steps, w.concurrency, recipe.allowed_tools
            ),
            prompt:
                json!({"intent": intent_doc(job), "recipe": {"name": recipe.name, "description": recipe.description}})
                    .to_string(),
            schema: Some(plan_schema(recipe)),
        };
        let validate = |v: &Value| -> Result<Plan, String> {
            let plan: Plan = serde_json::from_value(v.clone()).map_err(|e| format!("not a plan: {e}"))?;
            check(recipe, &plan, w).map_err(|(_, m)| m)?;
            Ok(plan)
        };
        match judge.ask(&req, validate).await {
            Ok(j) => {
                let event = json!({"source": "llm", "model": j.model, "decision": j.decision});
                let _ = self.ledger.record_event(&job.run.id, "plan_source", event).await;
                Ok(j.value)
            }
            Err(f) => {
                let event = json!({"source": "llm", "errCode": f.err_code().as_str(), "decision": f.decision()});
                let _ = self.ledger.record_event(&job.run.id, "plan_source", event).await;
                Err((f.err_code(), f.to_string()))
            }
        }
    }
}

fn intent_doc(job: &CompileJob) -> Value {
    json!({"id": job.intent.id, "goal": job.intent.goal, "inputs": job.intent.inputs, "constraints": job.intent.constraints})
}

/// Plans from any source: they must name their recipe and pass its checks.
fn check(recipe: &Recipe, plan: &Plan, w: &Workload) -> Result<(), (ErrCode, String)> {
    if plan.recipe != recipe.name {
        return Err((ErrCode::PlanInvalid, format!("the plan names recipe {:?}, not {:?}", plan.recipe, recipe.name)));
    }
    recipe.check_plan(plan, w).map_err(|e| (ErrCode::PlanInvalid, e.to_string()))
}

/// JSON Schema of a plan for this recipe (structured output where the API offers it).
fn plan_schema(recipe: &Recipe) -> Value {
    json!({
        "type": "object",
        "properties": {
            "recipe": {"type": "string", "enum": [recipe.name]},
            "concurrency": {"type": "integer", "minimum": 1, "maximum": recipe.max_concurrency},
            "tasks": {
                "type": "array",
                "minItems": 1,
                "maxItems": recipe.max_steps,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "tool": {"type": "string", "enum": recipe.allowed_tools},
                        "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "timeout_secs": {"type": "integer", "minimum": 1},
                    },
                    "required": ["name", "tool", "argv", "timeout_secs"],
                    "additionalProperties": false,
                },
            },
        },
        "required": ["recipe", "concurrency", "tasks"],
        "additionalProperties": false,
    })
}
