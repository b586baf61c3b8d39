//! LLM backends and the judge model policy (being written).
