//! POST /intents, POST /intents/{id}/run, POST /enqueue.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use machina_core::recipe::Workload;
use machina_ledger::{DedupKey, NewIntent, NewRun, Submission, Submitted};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, RequestId};

/// Longest goal text.
const GOAL_MAX_CHARS: usize = 4096;
/// Longest partition key.
const PARTITION_KEY_MAX_CHARS: usize = 128;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateIntent {
    goal: String,
    #[serde(default)]
    inputs: Map<String, Value>,
    #[serde(default)]
    constraints: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct StartRun {
    recipe: String,
    #[serde(default = "default_partition")]
    queue_partition_key: String,
    #[serde(default)]
    workload: Workload,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Enqueue {
    goal: String,
    #[serde(default)]
    inputs: Map<String, Value>,
    #[serde(default)]
    constraints: Map<String, Value>,
    recipe: String,
    #[serde(default = "default_partition")]
    queue_partition_key: String,
    #[serde(default)]
    workload: Workload,
}

fn default_partition() -> String {
    "default".into()
}

impl CreateIntent {
    fn into_new(self) -> ApiResult<NewIntent> {
        let goal = self.goal.trim().to_string();
        if goal.is_empty() || goal.chars().count() > GOAL_MAX_CHARS {
            return Err(ApiError::invalid(format!("goal must be 1-{GOAL_MAX_CHARS} characters")));
        }
        Ok(NewIntent { goal, inputs: Value::Object(self.inputs), constraints: Value::Object(self.constraints) })
    }
}

/// A partition key is 1-128 characters of `[A-Za-z0-9-_.:/]`.
pub(crate) fn check_partition_key(pk: &str) -> ApiResult<()> {
    if pk.is_empty()
        || pk.chars().count() > PARTITION_KEY_MAX_CHARS
        || !pk.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c))
    {
        return Err(ApiError::invalid(format!(
            "queuePartitionKey must be 1-{PARTITION_KEY_MAX_CHARS} characters of [A-Za-z0-9-_.:/]"
        )));
    }
    Ok(())
}

impl StartRun {
    /// Check recipe, partition and caps against the intent's inputs; returns the new run.
    fn check(self, st: &AppState, intent_id: String, inputs: &Value) -> ApiResult<NewRun> {
        check_partition_key(&self.queue_partition_key)?;
        let recipe = st.recipes.get(&self.recipe).ok_or_else(|| {
            ApiError::invalid(format!("unknown recipe {:?} (known: {})", self.recipe, st.recipes.names().join(", ")))
        })?;
        // Render now so over-cap workloads and unusable inputs are refused at submission
        // (a plan from the driver or a model is checked when it is compiled).
        if recipe.planner == "template" {
            recipe.render(inputs, &self.workload)?;
        } else {
            recipe.check_workload(&self.workload)?;
        }
        Ok(NewRun {
            intent_id,
            recipe: self.recipe,
            partition_key: self.queue_partition_key,
            workload: serde_json::to_value(self.workload).expect("workload serializes"),
            concurrency: self.workload.concurrency,
        })
    }
}

fn dedup_key(st: &AppState, rid: &RequestId, request_sha256: String) -> Option<DedupKey> {
    rid.from_client.then(|| DedupKey {
        request_id: rid.id.clone(),
        request_sha256,
        ttl_ms: (st.settings.api.dedup_ttl_secs * 1000) as i64,
    })
}

fn respond(s: Submitted) -> Response {
    let status = StatusCode::from_u16(s.status).unwrap_or(StatusCode::OK);
    let mut resp = (status, Json(s.body)).into_response();
    if s.replayed {
        resp.headers_mut().insert("idempotent-replay", HeaderValue::from_static("true"));
    }
    resp
}

pub(crate) async fn create(
    State(st): State<AppState>,
    rid: RequestId,
    body: JsonBody<CreateIntent>,
) -> ApiResult<Response> {
    let new = body.value.into_new()?;
    let key = dedup_key(&st, &rid, body.request_sha256);
    Ok(respond(st.ledger.submit(key, Submission::Intent(new)).await?))
}

pub(crate) async fn start_run(
    State(st): State<AppState>,
    Path(intent_id): Path<String>,
    rid: RequestId,
    body: JsonBody<StartRun>,
) -> ApiResult<Response> {
    let intent = st.ledger.intent(&intent_id).await?;
    let new = body.value.check(&st, intent.id, &intent.inputs)?;
    let key = dedup_key(&st, &rid, body.request_sha256);
    Ok(respond(submit_and_announce(&st, key, Submission::Run(new)).await?))
}

pub(crate) async fn enqueue(
    State(st): State<AppState>,
    rid: RequestId,
    body: JsonBody<Enqueue>,
) -> ApiResult<Response> {
    let key = dedup_key(&st, &rid, body.request_sha256);
    Ok(respond(enqueue_checked(&st, body.value, key).await?))
}

/// Check an intent-and-run document, submit it, announce the new run.
async fn enqueue_checked(st: &AppState, e: Enqueue, key: Option<DedupKey>) -> ApiResult<Submitted> {
    let intent = CreateIntent { goal: e.goal, inputs: e.inputs, constraints: e.constraints }.into_new()?;
    let run = StartRun { recipe: e.recipe, queue_partition_key: e.queue_partition_key, workload: e.workload }.check(
        st,
        String::new(),
        &intent.inputs,
    )?;
    submit_and_announce(st, key, Submission::Enqueue(intent, run)).await
}

/// Submit a run; wake the workers as soon as it is committed, while the disk confirms it,
/// and answer (and log, and signal its state) once it is durable.
async fn submit_and_announce(st: &AppState, key: Option<DedupKey>, s: Submission) -> ApiResult<Submitted> {
    let (submitted, durable) = st.ledger.submit_early(key, s).await?;
    let new_run = (!submitted.replayed).then(|| submitted.body.get("run").unwrap_or(&submitted.body));
    if let (Some(bus), Some(id)) = (&st.bus, new_run.and_then(|r| r["id"].as_str())) {
        let _ = machina_bus::signals::tasks_queued(bus, id, 1).await;
    }
    durable.await?;
    announce_submitted(st, &submitted).await;
    Ok(submitted)
}

/// Submit the JSON text of an intent-and-run document (what POST /enqueue takes), for D-Bus.
/// `request_id` makes it idempotent for `api.dedup_ttl_secs`, bound to the text's sha256.
pub(crate) async fn submit_json(st: &AppState, text: &str, request_id: Option<String>) -> ApiResult<Submitted> {
    let e: Enqueue = serde_json::from_str(text).map_err(|e| ApiError::invalid(format!("intent JSON: {e}")))?;
    let key = request_id.map(|id| DedupKey {
        request_id: id,
        request_sha256: machina_core::plan::sha256_hex(text.as_bytes()),
        ttl_ms: (st.settings.api.dedup_ttl_secs * 1000) as i64,
    });
    enqueue_checked(st, e, key).await
}

/// Log and signal a newly submitted run (not a replay).
async fn announce_submitted(st: &AppState, s: &Submitted) {
    if s.replayed {
        return;
    }
    let run = s.body.get("run").unwrap_or(&s.body);
    if let (Some(id), Some(recipe)) = (run["id"].as_str(), run["recipe"].as_str()) {
        tracing::info!(
            message_id = machina_core::log::MSG_RUN_SUBMITTED,
            run_id = id,
            recipe,
            partition = run["queuePartitionKey"].as_str().unwrap_or(""),
            "run submitted"
        );
        if let Some(bus) = &st.bus {
            // (TasksQueued went out at COMMIT, see submit_and_announce.)
            let _ = machina_bus::signals::run_state_changed(bus, id, "queued").await;
        }
    }
}
