//! machina-planner: where plans and judgements come from besides recipe templates —
//! LLM backends (OpenAI-compatible chat completions, Anthropic messages) chosen by the judge
//! model policy with credentials from systemd, recorded and replayed exchanges, and the
//! external policy driver.

pub mod driver;
pub mod llm;
