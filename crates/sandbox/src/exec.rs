//! `machina-task-exec`: parse the spec, apply it, exec the task.
//!
//! ```text
//! machina-task-exec (--spec-json JSON | --spec FILE) [--arg0 NAME] [--verify SPEC] [--report]
//!                   -- PROGRAM [ARG…]
//! machina-task-exec --preflight
//! machina-task-exec --serve          (stdin: the worker's SOCK_SEQPACKET socket; see crate::spawner)
//! ```
//! The environment and working directory are inherited as the caller set them. Without
//! `--verify`, PROGRAM is exec'd as `execvp` would (PATH search for a bare name). With
//! `--verify sha256:HEX` or `--verify stat:DEV:INO:SIZE:MTIME_NS:CTIME_NS:MODE:UID:GID` (see
//! [`Verify`]), PROGRAM is opened once after the sandbox is applied, checked, and that open
//! file is exec'd; a script's descriptor is left open for its interpreter (/dev/fd/N).
//! Every message the wrapper prints starts with [`WRAPPER_PREFIX`].
//!
//! The spawner's children ([`crate::spawner`]) run the same [`confine_and_exec`] with the
//! environment the worker sent instead of an inherited one.

use crate::{SandboxSpec, Verify, apply, preflight};
use nix::fcntl::{AtFlags, FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
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

/// What to confine and exec.
pub(crate) struct Args {
    pub(crate) spec: SandboxSpec,
    pub(crate) arg0: Option<OsString>,
    pub(crate) verify: Option<Verify>,
    pub(crate) report: bool,
    pub(crate) argv: Vec<OsString>,
    /// The program's environment: None inherits this process's (the wrapper, whose caller
    /// set it); Some is exactly these `KEY=VALUE` entries (a spawner's child).
    pub(crate) env: Option<Vec<OsString>>,
}

/// Entry point of the wrapper binary. Returns only on failure (or `--preflight`).
pub fn exec_main() -> ExitCode {
    exec_main_with(std::env::args_os().skip(1).collect())
}

/// [`exec_main`] with the arguments given (without the program name): for programs and
/// tests that act as the wrapper themselves.
pub fn exec_main_with(args: Vec<OsString>) -> ExitCode {
    match args.first().and_then(|a| a.to_str()) {
        Some("--preflight") => {
            let p = preflight();
            println!("{}", serde_json::to_string(&p).unwrap_or_default());
            return ExitCode::SUCCESS;
        }
        Some("--serve") if args.len() == 1 => return crate::spawner::serve(),
        _ => {}
    }
    match parse(args) {
        Ok(a) => ExitCode::from(confine_and_exec(&a)),
        Err(m) => {
            eprintln!("{WRAPPER_PREFIX}{m}");
            ExitCode::from(EXIT_SANDBOX_REFUSED)
        }
    }
}

/// Parse a spec as `--spec-json` gives it.
pub(crate) fn parse_spec(json: &[u8]) -> Result<SandboxSpec, String> {
    serde_json::from_slice(json).map_err(|e| format!("invalid spec: {e}"))
}

/// Apply the sandbox, check the required protections and the pin, and exec the program.
/// Returns only on failure, with the exit status that says which (messages on stderr).
pub(crate) fn confine_and_exec(a: &Args) -> u8 {
    let report = match apply(&a.spec) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{WRAPPER_PREFIX}sandbox not applied, command not run: {e}");
            return EXIT_SANDBOX_REFUSED;
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
        return EXIT_SANDBOX_REFUSED;
    }
    if let Err(e) = reset_signals() {
        eprintln!("{WRAPPER_PREFIX}cannot execute {}: resetting signal handling: {e}", a.argv[0].to_string_lossy());
        return EXIT_EXEC_FAILED;
    }
    if let Some(v) = &a.verify {
        return exec_pinned(a, v);
    }
    if let Some(env) = &a.env {
        return exec_searched(a, env);
    }
    let mut cmd = std::process::Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
    if let Some(name) = &a.arg0 {
        cmd.arg0(name);
    }
    let e = cmd.exec();
    eprintln!("{WRAPPER_PREFIX}cannot execute {}: {e}", a.argv[0].to_string_lossy());
    EXIT_EXEC_FAILED
}

/// Exec the program with exactly `env`, a bare name looked up in `env`'s PATH (std's
/// `Command` would reorder the environment by name). Returns only on failure.
fn exec_searched(a: &Args, env: &[OsString]) -> u8 {
    let cannot = |e: &dyn std::fmt::Display| {
        eprintln!("{WRAPPER_PREFIX}cannot execute {}: {e}", a.argv[0].to_string_lossy());
        EXIT_EXEC_FAILED
    };
    let program = match cstring(search_path(&a.argv[0], env).as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(e) => return cannot(&e),
    };
    let (argv, env) = match exec_vectors(a) {
        Ok(v) => v,
        Err(e) => return cannot(&e),
    };
    let Err(e) = nix::unistd::execve(&program, &argv, &env);
    cannot(&e)
}

/// The file `execvp` would run for `program` with `env`'s PATH (default /usr/bin:/bin): a
/// name with a slash is itself, else the first executable file of that name on the PATH
/// (or the name itself, for exec to fail with ENOENT).
fn search_path(program: &OsStr, env: &[OsString]) -> PathBuf {
    if program.as_bytes().contains(&b'/') {
        return program.into();
    }
    let path = env.iter().find_map(|kv| kv.as_bytes().strip_prefix(b"PATH=")).unwrap_or(b"/usr/bin:/bin");
    path.split(|&b| b == b':')
        .map(|dir| if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) })
        .map(|dir| dir.join(program))
        .find(|p| p.is_file() && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok())
        .unwrap_or_else(|| program.into())
}

/// Open the program, check it against the pin, exec the open file. Returns only on failure.
fn exec_pinned(a: &Args, v: &Verify) -> u8 {
    let path = Path::new(&a.argv[0]);
    let cannot = |e: &dyn std::fmt::Display| {
        eprintln!("{WRAPPER_PREFIX}cannot execute {}: {e}", path.display());
        EXIT_EXEC_FAILED
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
        return EXIT_VERIFY_FAILED;
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

/// argv (with `--arg0` applied) and the environment, as execve wants them.
fn exec_vectors(a: &Args) -> Result<(Vec<CString>, Vec<CString>), String> {
    let argv0 = a.arg0.as_ref().unwrap_or(&a.argv[0]);
    let argv = std::iter::once(argv0).chain(&a.argv[1..]).map(|s| cstring(s.as_bytes())).collect::<Result<_, _>>()?;
    let env = match &a.env {
        Some(env) => env.iter().map(|kv| cstring(kv.as_bytes())).collect::<Result<_, _>>()?,
        None => std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((argv, env))
}

/// Give the program the signal state posix_spawn and std's `Command` give a child:
/// nothing blocked (a spawner blocks the signals it reads from its signalfd) and SIGPIPE
/// at its default (the Rust runtime ignores it, and an ignored signal stays ignored across
/// exec, so a task writing into a closed pipe would see EPIPE instead of dying).
#[allow(unsafe_code)]
fn reset_signals() -> nix::Result<()> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run in signal context.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }.map(drop)
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
    let spec = parse_spec(spec.ok_or("no spec given (--spec-json or --spec)")?.as_bytes())?;
    let argv: Vec<OsString> = it.collect();
    if argv.is_empty() {
        return Err("no command after `--`".into());
    }
    Ok(Args { spec, arg0, verify, report, argv, env: None })
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
    fn bare_names_are_looked_up_in_the_given_path() {
        let env = os(&["HOME=/x", "PATH=/nonexistent:/usr/bin:/bin"]);
        assert_eq!(search_path(OsStr::new("env"), &env), Path::new("/usr/bin/env"));
        assert_eq!(search_path(OsStr::new("./env"), &env), Path::new("./env"));
        assert_eq!(search_path(OsStr::new("no-such-program"), &env), Path::new("no-such-program"));
        // Not executable: /etc/passwd is a file, but not one execvp would run.
        assert_eq!(search_path(OsStr::new("passwd"), &os(&["PATH=/etc"])), Path::new("passwd"));
        assert_eq!(search_path(OsStr::new("env"), &[]), Path::new("/usr/bin/env"), "default PATH");
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
