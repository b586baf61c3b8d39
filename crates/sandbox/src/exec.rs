//! `machina-task-exec`: parse the spec, apply it, exec the task.
//!
//! ```text
//! machina-task-exec (--spec-json JSON | --spec FILE) [--arg0 NAME] [--report] -- PROGRAM [ARG…]
//! machina-task-exec --preflight
//! ```
//! The environment and working directory are inherited as the caller set them.

use crate::{SandboxSpec, apply, preflight};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// Exit status when a required protection is not in force, or the spec is unusable:
/// the command was not run.
pub const EXIT_SANDBOX_REFUSED: u8 = 125;
/// Exit status when the command could not be executed (as a shell's).
pub const EXIT_EXEC_FAILED: u8 = 127;

struct Args {
    spec: SandboxSpec,
    arg0: Option<OsString>,
    report: bool,
    argv: Vec<OsString>,
}

/// Entry point of the wrapper binary. Returns only on failure (or `--preflight`).
pub fn exec_main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--preflight") {
        let p = preflight();
        println!("{}", serde_json::to_string(&p).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let a = match parse(args) {
        Ok(a) => a,
        Err(m) => {
            eprintln!("machina-task-exec: {m}");
            return ExitCode::from(EXIT_SANDBOX_REFUSED);
        }
    };
    let report = match apply(&a.spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("machina-task-exec: sandbox not applied, command not run: {e}");
            return ExitCode::from(EXIT_SANDBOX_REFUSED);
        }
    };
    if a.report {
        eprintln!("machina-task-exec: {report}");
    }
    let missing = report.missing(&a.spec.required, a.spec.network);
    if !missing.is_empty() {
        eprintln!(
            "machina-task-exec: required protection not in force: {}; command not run ({report})",
            missing.join(", ")
        );
        return ExitCode::from(EXIT_SANDBOX_REFUSED);
    }
    let mut cmd = std::process::Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
    if let Some(name) = &a.arg0 {
        cmd.arg0(name);
    }
    let e = cmd.exec();
    eprintln!("machina-task-exec: cannot execute {}: {e}", a.argv[0].to_string_lossy());
    ExitCode::from(EXIT_EXEC_FAILED)
}

fn parse(args: Vec<OsString>) -> Result<Args, String> {
    let mut it = args.into_iter();
    let mut spec = None;
    let mut arg0 = None;
    let mut report = false;
    let value = |it: &mut std::vec::IntoIter<OsString>, flag: &str| {
        it.next().ok_or_else(|| format!("{flag} needs a value")).map(|v| v.to_string_lossy().into_owned())
    };
    loop {
        let Some(flag) = it.next() else { return Err("missing `--` before the command".into()) };
        match flag.to_str() {
            Some("--") => break,
            Some("--spec-json") => spec = Some(value(&mut it, "--spec-json")?),
            Some("--spec") => {
                let path = value(&mut it, "--spec")?;
                spec = Some(std::fs::read_to_string(&path).map_err(|e| format!("--spec {path}: {e}"))?);
            }
            Some("--arg0") => arg0 = Some(value(&mut it, "--arg0")?.into()),
            Some("--report") => report = true,
            _ => return Err(format!("unknown argument {:?}", flag.to_string_lossy())),
        }
    }
    let spec = spec.ok_or("no spec given (--spec-json or --spec)")?;
    let spec: SandboxSpec = serde_json::from_str(&spec).map_err(|e| format!("invalid spec: {e}"))?;
    let argv: Vec<OsString> = it.collect();
    if argv.is_empty() {
        return Err("no command after `--`".into());
    }
    Ok(Args { spec, arg0, report, argv })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_spec_and_command() {
        let a = parse(os(&["--spec-json", r#"{"task_dir":"/t"}"#, "--arg0", "x", "--", "/bin/true", "-a"])).unwrap();
        assert_eq!(a.spec, SandboxSpec::new("/t"));
        assert_eq!(a.argv, os(&["/bin/true", "-a"]));
        assert_eq!(a.arg0.as_deref(), Some(std::ffi::OsStr::new("x")));
    }

    #[test]
    fn refuses_bad_invocations() {
        for bad in [
            &["--", "/bin/true"][..],
            &["--spec-json", "{}", "--", "/bin/true"][..],
            &["--spec-json", r#"{"task_dir":"/t","oops":1}"#, "--", "/bin/true"][..],
            &["--spec-json", r#"{"task_dir":"/t"}"#, "--"][..],
            &["--spec-json", r#"{"task_dir":"/t"}"#, "/bin/true"][..],
        ] {
            assert!(parse(os(bad)).is_err(), "{bad:?}");
        }
    }
}
