//! The two APIs on the wire: request bodies, auth headers and endpoints, and how an answer is
//! dug out of a response.
//!
//! OpenAI-compatible chat completions: structured output through `response_format`
//! (`json_schema` with `strict: true` when the caller gives a schema, else `json_object`).
//! Anthropic messages: with an object schema the model must call one tool, `answer`, whose
//! `input_schema` is the schema (the API's way to structured output) and the tool input is
//! the answer; without, the first text block is parsed as JSON (a ```json fence tolerated).
//! Both also get the instruction to answer in JSON in the system prompt (OpenAI's
//! `json_object` mode insists on the word).

use machina_core::config::ProviderKind;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::JudgeRequest;
use super::credentials::Credential;
use super::error::CallError;
use super::transport::Raw;

/// The Anthropic API version the request shape follows.
pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Name of the one tool Anthropic models are made to call with their answer.
const ANSWER_TOOL: &str = "answer";

/// Longest excerpt of a provider's text put into an error.
const EXCERPT_CHARS: usize = 300;

/// The URL requests of `kind` go to, under `base_url`.
pub(crate) fn endpoint(kind: ProviderKind, base_url: &str) -> Result<Url, String> {
    let path = match kind {
        ProviderKind::Openai => "chat/completions",
        ProviderKind::Anthropic => "messages",
    };
    let url = Url::parse(&format!("{}/{path}", base_url.trim_end_matches('/'))).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("not an http(s) URL with a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a URL with user:password@ is not allowed; the credential goes in a credential file".into());
    }
    Ok(url)
}

/// The system prompt both kinds get: the caller's, then the JSON instruction.
fn system_prompt(req: &JudgeRequest) -> String {
    let mut s = req.system.trim_end().to_owned();
    if !s.is_empty() {
        s.push_str("\n\n");
    }
    s.push_str("Answer with a single JSON value and nothing else: no prose, no code fence.");
    if let Some(schema) = &req.schema {
        s.push_str("\nThe JSON must match this JSON Schema: ");
        s.push_str(&schema.to_string());
    }
    s
}

/// The request body for `model`. Deterministic: the same inputs give the same body, which
/// record/replay keys on.
pub(crate) fn request_body(kind: ProviderKind, model: &str, req: &JudgeRequest, max_tokens: u32) -> Value {
    match kind {
        ProviderKind::Openai => {
            let response_format = match &req.schema {
                Some(schema) => json!({
                    "type": "json_schema",
                    "json_schema": {"name": schema_name(&req.purpose), "schema": schema, "strict": true},
                }),
                None => json!({"type": "json_object"}),
            };
            json!({
                "model": model,
                "messages": [
                    {"role": "system", "content": system_prompt(req)},
                    {"role": "user", "content": req.prompt},
                ],
                "max_tokens": max_tokens,
                "response_format": response_format,
            })
        }
        ProviderKind::Anthropic => {
            let mut body = json!({
                "model": model,
                "max_tokens": max_tokens,
                "system": system_prompt(req),
                "messages": [{"role": "user", "content": req.prompt}],
            });
            // Tool input must be an object; any other schema is asked for in the prompt only.
            if let Some(schema) = req.schema.as_ref().filter(|s| s["type"] == "object") {
                body["tools"] = json!([{
                    "name": ANSWER_TOOL,
                    "description": "Give your answer as this tool's input.",
                    "input_schema": schema,
                }]);
                body["tool_choice"] = json!({"type": "tool", "name": ANSWER_TOOL});
            }
            body
        }
    }
}

/// OpenAI wants `^[a-zA-Z0-9_-]{1,64}$` as the schema's name.
fn schema_name(purpose: &str) -> String {
    let name: String =
        purpose.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(64).collect();
    if name.is_empty() { "answer".into() } else { name }
}

/// Headers carrying the credential (marked sensitive, so no debug output shows them).
pub(crate) fn auth_headers(kind: ProviderKind, credential: &Credential) -> Result<HeaderMap, CallError> {
    let secret = |text: String| {
        let mut v = HeaderValue::from_str(&text).map_err(|_| CallError::BadCredential)?;
        v.set_sensitive(true);
        Ok::<_, CallError>(v)
    };
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match kind {
        ProviderKind::Openai => {
            h.insert(AUTHORIZATION, secret(format!("Bearer {}", credential.expose()))?);
        }
        ProviderKind::Anthropic => {
            h.insert(HeaderName::from_static("x-api-key"), secret(credential.expose().to_owned())?);
            h.insert(HeaderName::from_static("anthropic-version"), HeaderValue::from_static(ANTHROPIC_VERSION));
        }
    }
    Ok(h)
}

/// The JSON answer in a provider's response, or why there is none.
pub(crate) fn answer(kind: ProviderKind, raw: &Raw) -> Result<Value, CallError> {
    match raw.status {
        200..=299 => {}
        401 | 403 => return Err(CallError::Rejected(raw.status)),
        300..=399 => {
            return Err(CallError::Http {
                status: raw.status,
                detail: "a redirect is followed only within the provider's origin (elsewhere it would carry the credential); fix the provider's base_url".into(),
            });
        }
        status => return Err(CallError::Http { status, detail: error_detail(&raw.body) }),
    }
    let body: Value = serde_json::from_slice(&raw.body)
        .map_err(|e| CallError::Malformed(format!("the body is not JSON ({e}): {}", excerpt(&raw.body))))?;
    match kind {
        ProviderKind::Openai => openai_answer(&body),
        ProviderKind::Anthropic => anthropic_answer(&body),
    }
}

fn openai_answer(body: &Value) -> Result<Value, CallError> {
    let choice = &body["choices"][0];
    let message = choice["message"]
        .as_object()
        .ok_or_else(|| CallError::Malformed("no choices[0].message in a chat completion".into()))?;
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        return Err(CallError::NoAnswer(format!("the model refused: {}", cut(refusal))));
    }
    if choice["finish_reason"] == "length" {
        return Err(CallError::NoAnswer("the answer was cut off at judge.max_tokens".into()));
    }
    let text = message
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| CallError::Malformed("choices[0].message.content is not text".into()))?;
    parse_json_text(text)
}

fn anthropic_answer(body: &Value) -> Result<Value, CallError> {
    let blocks =
        body["content"].as_array().ok_or_else(|| CallError::Malformed("no content array in a message".into()))?;
    if let Some(tool) = blocks.iter().find(|b| b["type"] == "tool_use" && b["name"] == ANSWER_TOOL) {
        return Ok(tool["input"].clone());
    }
    if body["stop_reason"] == "max_tokens" {
        return Err(CallError::NoAnswer("the answer was cut off at judge.max_tokens".into()));
    }
    let text = blocks
        .iter()
        .find(|b| b["type"] == "text")
        .and_then(|b| b["text"].as_str())
        .ok_or_else(|| CallError::Malformed("no text block and no answer tool call in the message".into()))?;
    parse_json_text(text)
}

/// Parses a model's text as JSON, tolerating surrounding whitespace and a ``` fence.
pub(crate) fn parse_json_text(text: &str) -> Result<Value, CallError> {
    let mut t = text.trim();
    if let Some(rest) = t.strip_prefix("```") {
        // Drop the opening line (```json) and the closing fence.
        t = rest.split_once('\n').map_or("", |(_, body)| body).trim_end();
        t = t.strip_suffix("```").unwrap_or(t).trim();
    }
    serde_json::from_str(t).map_err(|e| CallError::Malformed(format!("the answer is not JSON ({e}): {}", cut(text))))
}

/// The provider's error message (both APIs put it at `error.message`), else the body's start.
fn error_detail(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(cut))
        .unwrap_or_else(|| excerpt(body))
}

fn excerpt(body: &[u8]) -> String {
    if body.is_empty() { "(empty body)".into() } else { cut(&String::from_utf8_lossy(body)) }
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: u16, body: Value) -> Raw {
        Raw { status, body: body.to_string().into_bytes() }
    }

    fn req(schema: Option<Value>) -> JudgeRequest {
        JudgeRequest { purpose: "plan step".into(), system: "You plan.".into(), prompt: "go".into(), schema }
    }

    #[test]
    fn openai_body_asks_for_structured_output() {
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
        let b = request_body(ProviderKind::Openai, "gpt", &req(Some(schema.clone())), 99);
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(b["response_format"]["json_schema"]["name"], "plan_step");
        assert_eq!(b["response_format"]["json_schema"]["schema"], schema);
        assert_eq!(b["max_tokens"], 99);
        assert!(b["messages"][0]["content"].as_str().unwrap().contains("JSON"));
        let b = request_body(ProviderKind::Openai, "gpt", &req(None), 99);
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
    }

    #[test]
    fn anthropic_body_uses_a_forced_tool_for_object_schemas_only() {
        let schema = json!({"type": "object"});
        let b = request_body(ProviderKind::Anthropic, "claude", &req(Some(schema.clone())), 10);
        assert_eq!(b["tools"][0]["input_schema"], schema);
        assert_eq!(b["tool_choice"]["name"], "answer");
        let b = request_body(ProviderKind::Anthropic, "claude", &req(Some(json!({"type": "array"}))), 10);
        assert!(b.get("tools").is_none());
        assert!(b["system"].as_str().unwrap().contains("\"array\""));
    }

    #[test]
    fn answers_are_found_in_both_shapes() {
        let openai = json!({"choices": [{"message": {"content": "{\"a\":1}"}, "finish_reason": "stop"}]});
        assert_eq!(answer(ProviderKind::Openai, &raw(200, openai)).unwrap(), json!({"a": 1}));
        let tool = json!({"content": [{"type": "text", "text": "sure"}, {"type": "tool_use", "name": "answer", "input": {"a": 2}}]});
        assert_eq!(answer(ProviderKind::Anthropic, &raw(200, tool)).unwrap(), json!({"a": 2}));
        let fenced = json!({"content": [{"type": "text", "text": "```json\n{\"a\": 3}\n```"}]});
        assert_eq!(answer(ProviderKind::Anthropic, &raw(200, fenced)).unwrap(), json!({"a": 3}));
    }

    #[test]
    fn non_answers_are_told_apart() {
        let kind = |p, r: &Raw| answer(p, r).unwrap_err().kind();
        let refused = json!({"choices": [{"message": {"content": null, "refusal": "no"}}]});
        assert_eq!(kind(ProviderKind::Openai, &raw(200, refused)), "no_answer");
        let cut_off = json!({"choices": [{"message": {"content": "{\"a\""}, "finish_reason": "length"}]});
        assert_eq!(kind(ProviderKind::Openai, &raw(200, cut_off)), "no_answer");
        let prose = json!({"content": [{"type": "text", "text": "I think yes"}]});
        assert_eq!(kind(ProviderKind::Anthropic, &raw(200, prose)), "malformed_response");
        assert_eq!(kind(ProviderKind::Openai, &Raw { status: 200, body: b"<html>".to_vec() }), "malformed_response");
        assert_eq!(kind(ProviderKind::Anthropic, &raw(401, json!({}))), "credential_rejected");
        let e = answer(ProviderKind::Openai, &raw(400, json!({"error": {"message": "bad model"}}))).unwrap_err();
        assert_eq!(e.to_string(), "HTTP 400: bad model");
    }

    #[test]
    fn endpoints_join_and_refuse_userinfo() {
        assert_eq!(
            endpoint(ProviderKind::Openai, "http://127.0.0.1:1/v1/").unwrap().as_str(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint(ProviderKind::Anthropic, "https://api.anthropic.com/v1").unwrap().as_str(),
            "https://api.anthropic.com/v1/messages"
        );
        assert!(endpoint(ProviderKind::Openai, "https://u:p@h/v1").is_err());
    }
}
