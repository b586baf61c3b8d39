//! `machina-task-exec`: parse the spec, apply it, exec the task.
//!
//! ```text
//! machina-task-exec (--spec-json JSON | --spec FILE) [--arg0 NAME] [--verify SPEC] [--report]
//!                   -- PROGRAM [ARG…]
//! machina-task-exec --preflight
//! ```
//! The environment and working directory are inherited as the caller set them. Without
//! `--verify`, PROGRAM is exec'd as `execvp` would (PATH search for a bare name). With
//! `--verify sha256:HEX` or `--verify stat:DEV:INO:SIZE:MTIME_NS:CTIME_NS:MODE:UID:GID` (see
//! [`Verify`]), PROGRAM is opened once after the sandbox is applied, checked, and that open
//! file is exec'd; a script's descriptor is left open for its interpreter (/dev/fd/N).
//! Every message the wrapper prints starts with [`WRAPPER_PREFIX`].

use crate::{SandboxSpec, Verify, apply, preflight};
use nix::fcntl::{AtFlags, FcntlArg, FdFlag, fcntl};
use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

/// Exit status when the program is not the pinned file (`--verify`): the command was not run.
pub const EXIT_VERIFY_FAILED: u8 = 124;
/// Exit status when a required protection is not in force, or the spec is unusable:
/// the command was not run.
pub const EXIT_SANDBOX_REFUSED: u8 = 125;
/// Exit status when the command could not be executed (as a shell's).
pub const EXIT_EXEC_FAILED: u8 = 127;
/// How every line the wrapper itself writes to stderr starts: with one of the exit codes
/// above, it tells a wrapper failure from the command's own exit status.
pub const WRAPPER_PREFIX: &str = "machina-task-exec: ";

struct Args {
    spec: SandboxSpec,
    arg0: Option<OsString>,
    verify: Option<Verify>,
    report: bool,
    argv: Vec<OsString>,
}

/// Entry point of the wrapper binary. Returns only on failure (or `--preflight`).
pub fn exec_main() -> ExitCode {
    exec_main_with(std::env::args_os().skip(1).collect())
}

/// [`exec_main`] with the arguments given (without the program name): for programs and
/// tests that act as the wrapper themselves.
pub fn exec_main_with(args: Vec<OsString>) -> ExitCode {
    if args.first().is_some_and(|a| a == "--preflight") {
        let p = preflight();
        println!("{}", serde_json::to_string(&p).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let a = match parse(args) {
        Ok(a) => a,
        Err(m) => {
            eprintln!("{WRAPPER_PREFIX}{m}");
            return ExitCode::from(EXIT_SANDBOX_REFUSED);
        }
    };
    let report = match apply(&a.spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{WRAPPER_PREFIX}sandbox not applied, command not run: {e}");
            return ExitCode::from(EXIT_SANDBOX_REFUSED);
        }
    };
    if a.report {
        eprintln!("{WRAPPER_PREFIX}{report}");
    }
    let missing = report.missing(&a.spec.required, a.spec.network);
    if !missing.is_empty() {
        eprintln!(
            "{WRAPPER_PREFIX}required protection not in force: {}; command not run ({report})",
            missing.join(", ")
        );
        return ExitCode::from(EXIT_SANDBOX_REFUSED);
    }
    if let Some(v) = &a.verify {
        return exec_pinned(&a, v);
    }
    let mut cmd = std::process::Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
    if let Some(name) = &a.arg0 {
        cmd.arg0(name);
    }
    let e = cmd.exec();
    eprintln!("{WRAPPER_PREFIX}cannot execute {}: {e}", a.argv[0].to_string_lossy());
    ExitCode::from(EXIT_EXEC_FAILED)
}

/// Open the program, check it against the pin, exec the open file. Returns only on failure.
fn exec_pinned(a: &Args, v: &Verify) -> ExitCode {
    let path = Path::new(&a.argv[0]);
    let cannot = |e: &dyn std::fmt::Display| {
        eprintln!("{WRAPPER_PREFIX}cannot execute {}: {e}", path.display());
        ExitCode::from(EXIT_EXEC_FAILED)
    };
    // O_NONBLOCK: a FIFO planted at the path must not hang the wrapper (check refuses it).
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return cannot(&e),
    };
    if let Err(e) = v.check(&file, path) {
        eprintln!("{WRAPPER_PREFIX}{e}; command not run");
        return ExitCode::from(EXIT_VERIFY_FAILED);
    }
    // Exec'ing a script by descriptor, the kernel hands the interpreter /dev/fd/N: the
    // descriptor must survive the exec (else ENOENT), and stays open in the interpreter.
    if is_script(&file)
        && let Err(e) = fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty()))
    {
        return cannot(&e);
    }
    let (argv, env) = match exec_vectors(a) {
        Ok(v) => v,
        Err(e) => return cannot(&e),
    };
    let Err(e) = nix::unistd::execveat(&file, c"", &argv, &env, AtFlags::AT_EMPTY_PATH);
    cannot(&e)
}

/// argv (with `--arg0` applied) and the inherited environment, as execve wants them.
fn exec_vectors(a: &Args) -> Result<(Vec<CString>, Vec<CString>), String> {
    let argv0 = a.arg0.as_ref().unwrap_or(&a.argv[0]);
    let argv = std::iter::once(argv0).chain(&a.argv[1..]).map(|s| cstring(s.as_bytes())).collect::<Result<_, _>>()?;
    let env = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstring(&kv)
        })
        .collect::<Result<_, _>>()?;
    Ok((argv, env))
}

fn cstring(bytes: &[u8]) -> Result<CString, String> {
    CString::new(bytes)
        .map_err(|_| format!("argument or environment entry contains NUL: {:?}", String::from_utf8_lossy(bytes)))
}

fn is_script(file: &File) -> bool {
    let mut magic = [0u8; 2];
    file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"#!"
}

fn parse(args: Vec<OsString>) -> Result<Args, String> {
    let mut it = args.into_iter();
    let mut spec = None;
    let mut arg0 = None;
    let mut verify = None;
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
            Some("--verify") => {
                verify = Some(value(&mut it, "--verify")?.parse::<Verify>().map_err(|e| e.to_string())?)
            }
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
    Ok(Args { spec, arg0, verify, report, argv })
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
    fn parses_verify() {
        let stat = "stat:1:2:3:4:5:100755:0:0";
        let a = parse(os(&["--spec-json", r#"{"task_dir":"/t"}"#, "--verify", stat, "--", "/bin/true"])).unwrap();
        assert_eq!(a.verify.map(|v| v.to_string()).as_deref(), Some(stat));
        let e = parse(os(&["--spec-json", r#"{"task_dir":"/t"}"#, "--verify", "md5:x", "--", "/bin/true"]));
        assert!(e.err().unwrap().contains("invalid --verify"));
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
