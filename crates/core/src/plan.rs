//! Plans (what CompileST produces) and the canonical task key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::Step;

/// One task of a plan, normalized: the unit the worker runs and the ledger commits once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Unique within its plan.
    pub name: String,
    /// Tool that runs it (`shell` for now).
    pub tool: String,
    /// Executable and arguments; never a shell string.
    pub argv: Vec<String>,
    /// Wall-clock limit in seconds; the whole process group is killed after it.
    pub timeout_secs: u64,
    /// Permission lease token for a tool above the free tier (single use; absent from the
    /// canonical form when unset, so keys of tasks without one are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// A compiled plan: what the approver sees and binds to by its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Recipe it was rendered from.
    pub recipe: String,
    /// How many of its tasks may run at once.
    pub concurrency: u32,
    /// The tasks, in order.
    pub tasks: Vec<TaskSpec>,
}

impl Plan {
    /// Canonical JSON bytes (sorted keys): the bytes stored as the plan artifact.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical_json(&serde_json::to_value(self).expect("plan serializes"))
    }
}

/// JSON with object keys sorted, no insignificant whitespace.
pub fn canonical_json(v: &serde_json::Value) -> Vec<u8> {
    // serde_json's Map is a BTreeMap (the preserve_order feature is not enabled in
    // this workspace), so serialization already sorts keys; re-sorting keeps this
    // true even if a dependency turns that feature on.
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sort(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).expect("json value serializes")
}

/// sha256 (lowercase hex) of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(bytes), &mut hex).expect("64 hex digits hold 32 bytes");
    std::str::from_utf8(&hex).expect("hex digits are ASCII").to_owned()
}

/// task_key = sha256 of the canonical encoding of (intent, run, step, normalized task spec).
///
/// The same task of the same run always gets the same key, so a task re-run after a
/// crash is recognised, and its tools can deduplicate side effects by it.
///
/// Written straight into the hash, fields in sorted order, so that it equals
/// `sha256(canonical_json({"intent", "run", "step", "task"}))` without building a JSON value
/// (the ledger computes one per task it inserts; a test checks the two agree).
pub fn task_key(intent_id: &str, run_id: &str, step: Step, spec: &TaskSpec) -> String {
    hex::encode(task_key_digest(intent_id, run_id, step, spec))
}

/// The 32 bytes of [`task_key`] (the ledger stores them as they are).
pub fn task_key_digest(intent_id: &str, run_id: &str, step: Step, spec: &TaskSpec) -> [u8; 32] {
    // Exhaustive, so a new field of TaskSpec cannot be left out of the key by accident.
    let TaskSpec { name, tool, argv, timeout_secs, lease } = spec;
    let input = KeyInput {
        intent: intent_id,
        run: run_id,
        step: step.as_str(),
        task: SortedSpec { argv, lease: lease.as_deref(), name, timeout_secs: *timeout_secs, tool },
    };
    // Serialized whole, then hashed in one call: feeding the hash serde's many small writes
    // cost more than the copy.
    let mut bytes = Vec::with_capacity(KEY_INPUT_CAPACITY);
    serde_json::to_writer(&mut bytes, &input).expect("a task key's input serializes");
    Sha256::digest(&bytes).into()
}

/// Bytes a typical task key's input takes (it grows past this when it must).
const KEY_INPUT_CAPACITY: usize = 256;

/// What a task key hashes, fields in canonical (sorted) order.
#[derive(Serialize)]
struct KeyInput<'a> {
    intent: &'a str,
    run: &'a str,
    step: &'a str,
    task: SortedSpec<'a>,
}

/// A [`TaskSpec`] with its fields in sorted order, serialized as the spec itself is.
#[derive(Serialize)]
struct SortedSpec<'a> {
    argv: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<&'a str>,
    name: &'a str,
    timeout_secs: u64,
    tool: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            tool: "shell".into(),
            argv: vec!["/usr/bin/true".into()],
            timeout_secs: 5,
            lease: None,
        }
    }

    #[test]
    fn task_key_is_stable_and_distinguishes_inputs() {
        let a = task_key("i1", "r1", Step::Execute, &spec("a"));
        assert_eq!(a, task_key("i1", "r1", Step::Execute, &spec("a")));
        assert_eq!(a.len(), 64);
        assert_ne!(a, task_key("i1", "r2", Step::Execute, &spec("a")));
        assert_ne!(a, task_key("i2", "r1", Step::Execute, &spec("a")));
        assert_ne!(a, task_key("i1", "r1", Step::Execute, &spec("b")));
    }

    /// The reference definition: sha256 of the canonical JSON of the key's input.
    fn task_key_by_value(intent_id: &str, run_id: &str, step: Step, spec: &TaskSpec) -> String {
        let value = serde_json::json!({"intent": intent_id, "run": run_id, "step": step.as_str(), "task": spec});
        sha256_hex(&canonical_json(&value))
    }

    #[test]
    fn task_key_equals_the_hash_of_the_canonical_json() {
        let mut odd = spec("näme \"quoted\" \u{1F600} \\ / \n\t");
        odd.argv = vec!["/bin/echo".into(), "".into(), "a\u{0}b".into(), "ünï".into()];
        odd.timeout_secs = u64::MAX;
        let mut leased = spec("leased");
        leased.lease = Some("tok-\u{e9}".into());
        for (i, s) in [spec("a"), odd, leased].iter().enumerate() {
            for step in [Step::Compile, Step::Execute] {
                let (intent, run) = (format!("intent-{i}"), format!("run-\"{i}\""));
                assert_eq!(task_key(&intent, &run, step, s), task_key_by_value(&intent, &run, step, s), "{s:?}");
            }
        }
        // The key of a fixed task never changes (tasks in existing ledgers keep theirs).
        assert_eq!(
            task_key("i1", "r1", Step::Execute, &spec("a")),
            "5c7b4aa727d95ae7c84f352c6cccdb72a2c6a7cdbdab8b4eef8d5af6acc30858"
        );
    }

    #[test]
    fn canonical_json_ignores_key_order() {
        let x: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"d":2,"c":3}}"#).unwrap();
        let y: serde_json::Value = serde_json::from_str(r#"{"a":{"c":3,"d":2},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&x), canonical_json(&y));
        assert_eq!(canonical_json(&x), br#"{"a":{"c":3,"d":2},"b":1}"#.to_vec());
    }
}
