//! Recipes: TOML files that cap a run's workload and render its plan from the intent's inputs.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::plan::{Plan, TaskSpec};

/// The recipe every installation has: runs the commands listed in `inputs.tasks`.
pub const SANDBOX_DEFAULT: &str = include_str!("../recipes/sandbox-default.toml");
/// A small demo recipe: greets each word of `inputs.words`, then reports the kernel.
pub const DEMO: &str = include_str!("../recipes/demo.toml");

/// Why a recipe could not be loaded or a plan not rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecipeError {
    /// The recipe file is not valid.
    #[error("recipe {source_name}: {message}")]
    Invalid {
        /// File or built-in name.
        source_name: String,
        /// What was wrong.
        message: String,
    },
    /// The intent's inputs do not fit the recipe's template.
    #[error("recipe {recipe}: {message}")]
    Render {
        /// Recipe name.
        recipe: String,
        /// What was wrong.
        message: String,
    },
    /// The workload or plan exceeds the recipe's caps.
    #[error("recipe {recipe}: {message}")]
    OverCaps {
        /// Recipe name.
        recipe: String,
        /// What was over which cap.
        message: String,
    },
}

/// A recipe.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Name used in run requests.
    pub name: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Whether the plan waits at the approval gate (DecideST).
    #[serde(default = "yes")]
    pub approval_required: bool,
    /// Most tasks of one run that may run at once.
    pub max_concurrency: u32,
    /// Most tasks a plan may have.
    pub max_steps: u32,
    /// Tools its tasks may use.
    pub allowed_tools: Vec<String>,
    /// Where CompileST gets the plan: `"template"` (the task templates below), `"driver"`
    /// (the external policy driver, `[driver]`) or `"llm"` (the judge's models, `[judge]`).
    /// Every plan is checked against this recipe's caps and allowed tools alike.
    #[serde(default = "template")]
    pub planner: String,
    /// Task templates, rendered in order (required by the template planner).
    #[serde(rename = "task", default)]
    pub tasks: Vec<TaskTemplate>,
}

fn yes() -> bool {
    true
}

fn template() -> String {
    "template".into()
}

/// A template for one task, or one per element of an input array (`foreach`).
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    /// Task name; may use `{{index}}` and placeholders.
    pub name: String,
    /// Name of an input holding an array: one task per element, bound to `{{item}}`.
    pub foreach: Option<String>,
    /// Tool.
    #[serde(default = "shell")]
    pub tool: String,
    /// Argument vector. An element that is exactly one placeholder naming an
    /// array of strings is spliced in.
    pub argv: Vec<String>,
    /// Timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Permission lease token, usually a placeholder such as `{{lease}}` naming an input;
    /// empty after rendering means none.
    #[serde(default)]
    pub lease: Option<String>,
}

fn shell() -> String {
    "shell".into()
}
fn default_timeout() -> u64 {
    60
}

/// What a run asks of its recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    /// Tasks of this run that may run at once (≤ the recipe's max_concurrency).
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Upper bound on the plan's task count the caller expects (≤ max_steps).
    #[serde(default)]
    pub max_steps: Option<u32>,
}

fn one() -> u32 {
    1
}

impl Default for Workload {
    fn default() -> Self {
        Self { concurrency: 1, max_steps: None }
    }
}

impl Recipe {
    /// Parse and check one recipe; `source_name` names the file in errors.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, RecipeError> {
        let invalid = |message: String| RecipeError::Invalid { source_name: source_name.to_string(), message };
        let r: Recipe = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(invalid(format!("name {:?} must be non-empty [A-Za-z0-9._-]", r.name)));
        }
        if r.max_concurrency == 0 || r.max_steps == 0 {
            return Err(invalid("max_concurrency and max_steps must be at least 1".into()));
        }
        if !["template", "driver", "llm"].contains(&r.planner.as_str()) {
            return Err(invalid(format!("planner {:?} must be \"template\", \"driver\" or \"llm\"", r.planner)));
        }
        if r.planner == "template" && r.tasks.is_empty() {
            return Err(invalid("a template recipe needs at least one [[task]]".into()));
        }
        for t in &r.tasks {
            if !r.allowed_tools.contains(&t.tool) {
                return Err(invalid(format!("task {:?} uses tool {:?} not in allowed_tools", t.name, t.tool)));
            }
            if t.argv.is_empty() || t.timeout_secs == 0 {
                return Err(invalid(format!("task {:?} needs a non-empty argv and timeout_secs ≥ 1", t.name)));
            }
        }
        Ok(r)
    }

    /// Check a workload against the caps (queue_policy_violation when over).
    pub fn check_workload(&self, w: &Workload) -> Result<(), RecipeError> {
        let over = |message: String| RecipeError::OverCaps { recipe: self.name.clone(), message };
        if w.concurrency == 0 {
            return Err(over("workload.concurrency must be at least 1".into()));
        }
        if w.concurrency > self.max_concurrency {
            return Err(over(format!(
                "workload.concurrency {} exceeds the recipe's max_concurrency {}",
                w.concurrency, self.max_concurrency
            )));
        }
        if let Some(s) = w.max_steps.filter(|s| *s > self.max_steps) {
            return Err(over(format!("workload.maxSteps {s} exceeds the recipe's max_steps {}", self.max_steps)));
        }
        Ok(())
    }

    /// Render the plan for these inputs and check it against the caps.
    pub fn render(&self, inputs: &Value, w: &Workload) -> Result<Plan, RecipeError> {
        self.check_workload(w)?;
        let render_err = |message: String| RecipeError::Render { recipe: self.name.clone(), message };
        let mut tasks = Vec::new();
        for t in &self.tasks {
            let items: Vec<Value> = match &t.foreach {
                None => vec![Value::Null],
                Some(key) => match inputs.get(key) {
                    Some(Value::Array(a)) if !a.is_empty() => a.clone(),
                    _ => return Err(render_err(format!("inputs.{key} must be a non-empty array"))),
                },
            };
            for item in items {
                let index = tasks.len();
                let scope = Scope { inputs, item: &item, index };
                let name = scope.fill(&t.name).map_err(&render_err)?;
                let mut argv = Vec::new();
                for a in &t.argv {
                    match scope.splice(a).map_err(&render_err)? {
                        Some(list) => argv.extend(list),
                        None => argv.push(scope.fill(a).map_err(&render_err)?),
                    }
                }
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(render_err(format!("task {name:?} renders to an empty argv")));
                }
                let lease = match &t.lease {
                    Some(l) => Some(scope.fill(l).map_err(&render_err)?).filter(|l| !l.is_empty()),
                    None => None,
                };
                tasks.push(TaskSpec { name, tool: t.tool.clone(), argv, timeout_secs: t.timeout_secs, lease });
            }
        }
        let plan = Plan { recipe: self.name.clone(), concurrency: w.concurrency, tasks };
        self.check_plan(&plan, w)?;
        Ok(plan)
    }

    /// Check a plan (from any source) against the caps and allowed tools.
    pub fn check_plan(&self, plan: &Plan, w: &Workload) -> Result<(), RecipeError> {
        let over = |message: String| RecipeError::OverCaps { recipe: self.name.clone(), message };
        let n = plan.tasks.len() as u32;
        if n == 0 {
            return Err(RecipeError::Render { recipe: self.name.clone(), message: "plan has no tasks".into() });
        }
        let cap = w.max_steps.unwrap_or(self.max_steps).min(self.max_steps);
        if n > cap {
            return Err(over(format!("plan has {n} tasks, over the cap of {cap} steps")));
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &plan.tasks {
            if !self.allowed_tools.contains(&t.tool) {
                return Err(over(format!("task {:?} uses tool {:?}, not allowed by the recipe", t.name, t.tool)));
            }
            if !names.insert(&t.name) {
                return Err(RecipeError::Render {
                    recipe: self.name.clone(),
                    message: format!("task name {:?} appears twice", t.name),
                });
            }
        }
        Ok(())
    }
}

struct Scope<'a> {
    inputs: &'a Value,
    item: &'a Value,
    index: usize,
}

impl Scope<'_> {
    fn lookup(&self, path: &str) -> Result<Value, String> {
        let mut parts = path.trim().split('.');
        let root = match parts.next() {
            Some("index") => return Ok(Value::from(self.index)),
            Some("item") => self.item,
            Some("input") => self.inputs,
            other => return Err(format!("unknown placeholder {{{{{}}}}}", other.unwrap_or(""))),
        };
        let mut v = root;
        for p in parts {
            v = v.get(p).ok_or_else(|| format!("placeholder {{{{{path}}}}} has no value in the inputs"))?;
        }
        Ok(v.clone())
    }

    /// If `arg` is exactly one placeholder naming an array of strings, the strings.
    fn splice(&self, arg: &str) -> Result<Option<Vec<String>>, String> {
        let Some(inner) = arg.strip_prefix("{{").and_then(|s| s.strip_suffix("}}")) else {
            return Ok(None);
        };
        if inner.contains("{{") {
            return Ok(None);
        }
        match self.lookup(inner)? {
            Value::Array(a) => a
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(format!("{{{{{inner}}}}} must hold strings, found {other}")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            _ => Ok(None),
        }
    }

    fn fill(&self, template: &str) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..].find("}}").ok_or_else(|| format!("unclosed placeholder in {template:?}"))?;
            let path = &rest[start + 2..start + end];
            match self.lookup(path)? {
                Value::String(s) => out.push_str(&s),
                v @ (Value::Number(_) | Value::Bool(_)) => out.push_str(&v.to_string()),
                other => return Err(format!("placeholder {{{{{path}}}}} must be a string or number, found {other}")),
            }
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// All recipes known to a process: the built-ins plus a directory of `*.toml`.
#[derive(Debug, Clone, Default)]
pub struct RecipeBook {
    recipes: BTreeMap<String, Recipe>,
}

impl RecipeBook {
    /// Built-ins only.
    pub fn builtin() -> Self {
        let mut book = Self::default();
        for (name, text) in [("builtin:sandbox-default", SANDBOX_DEFAULT), ("builtin:demo", DEMO)] {
            let r = Recipe::parse(name, text).expect("built-in recipes are valid");
            book.recipes.insert(r.name.clone(), r);
        }
        book
    }

    /// Built-ins plus every `*.toml` in `dir` (a file may replace a built-in of the same name).
    /// A missing directory is not an error; an invalid file is.
    pub fn load(dirs: &[PathBuf]) -> Result<Self, RecipeError> {
        let mut book = Self::builtin();
        for dir in dirs {
            book.load_dir(dir)?;
        }
        Ok(book)
    }

    fn load_dir(&mut self, dir: &Path) -> Result<(), RecipeError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(RecipeError::Invalid { source_name: dir.display().to_string(), message: e.to_string() });
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for p in paths {
            let shown = p.display().to_string();
            let text = std::fs::read_to_string(&p)
                .map_err(|e| RecipeError::Invalid { source_name: shown.clone(), message: e.to_string() })?;
            let r = Recipe::parse(&shown, &text)?;
            self.recipes.insert(r.name.clone(), r);
        }
        Ok(())
    }

    /// The recipe called `name`.
    pub fn get(&self, name: &str) -> Option<&Recipe> {
        self.recipes.get(name)
    }

    /// Names of all recipes.
    pub fn names(&self) -> Vec<&str> {
        self.recipes.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn demo_renders_one_task_per_word_plus_one() {
        let book = RecipeBook::builtin();
        let demo = book.get("demo").unwrap();
        let plan = demo.render(&json!({"words": ["alpha", "beta"]}), &Workload::default()).unwrap();
        assert_eq!(plan.tasks.len(), 3);
        assert_eq!(plan.tasks[0].argv.last().unwrap(), "alpha");
        assert_eq!(plan.tasks[1].name, "greet-1");
    }

    #[test]
    fn sandbox_default_splices_argv() {
        let book = RecipeBook::builtin();
        let r = book.get("sandbox-default").unwrap();
        let plan = r.render(&json!({"tasks": [{"argv": ["/usr/bin/uname", "-a"]}]}), &Workload::default()).unwrap();
        assert_eq!(plan.tasks[0].argv, vec!["/usr/bin/uname", "-a"]);
    }

    #[test]
    fn caps_are_enforced() {
        let book = RecipeBook::builtin();
        let demo = book.get("demo").unwrap();
        let w = Workload { concurrency: 99, max_steps: None };
        assert!(matches!(demo.check_workload(&w), Err(RecipeError::OverCaps { .. })));
        let many: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let err = demo.render(&json!({ "words": many }), &Workload::default()).unwrap_err();
        assert!(matches!(err, RecipeError::OverCaps { .. }), "{err}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let book = RecipeBook::builtin();
        let demo = book.get("demo").unwrap();
        let err = demo.render(&json!({}), &Workload::default()).unwrap_err();
        assert!(err.to_string().contains("inputs.words"), "{err}");
        let err = demo.render(&json!({"words": [{"x": 1}]}), &Workload::default()).unwrap_err();
        assert!(err.to_string().contains("must be a string"), "{err}");
    }

    #[test]
    fn unknown_recipe_keys_are_rejected() {
        let err =
            Recipe::parse("x.toml", "name='x'\nmax_concurrency=1\nmax_steps=1\nallowed_tools=[]\ntask=[]\nbogus=1")
                .unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }
}
