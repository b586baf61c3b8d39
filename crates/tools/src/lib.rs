//! machina-tools: the task tools that run inside the worker process rather than as a
//! sandboxed child — `http` (an SSRF-defended client), `file` (reads and writes confined
//! to a task's directory or declared roots) — and the `plugin` manifests that declare
//! external tool executables, their pinned sha256 and their capabilities.

pub mod file;
pub mod http;
pub mod plugin;
