//! The command line of `machinactl` (clap derive); also the source of its man page and completions.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Control machina over D-Bus (org.machina.Manager1 on the system bus).
#[derive(Debug, Parser)]
#[command(name = "machinactl", version, about, long_about = None)]
#[command(after_help = "Exit status: 0 success; 1 the run failed or was canceled (watch), or another error; \
2 usage; 3 not found; 4 illegal state, retry drift or conflict; 5 permission denied; \
65 invalid input or policy violation; 69 machina is not reachable on the bus.")]
pub struct Cli {
    /// D-Bus address to use instead of the system bus (e.g. unix:path=/run/dbus/system_bus_socket).
    #[arg(long, global = true, env = "MACHINA_BUS_ADDRESS")]
    pub address: Option<String>,
    /// Output format of read commands.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How read commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Text,
    /// The JSON the service returned (one document, or one event per line for watch).
    Json,
}

/// machinactl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit an intent (JSON as for POST /enqueue) from a file, or - for standard input.
    Submit {
        /// File holding the intent JSON, or - for standard input.
        file: PathBuf,
        /// Idempotency key: resubmitting with the same key returns the same run.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Start a run of a recipe with the given inputs.
    Run {
        /// Recipe name.
        recipe: String,
        /// An input as KEY=VALUE (VALUE parsed as JSON when it is JSON, else a string); repeatable.
        #[arg(long = "input", short = 'i', value_name = "KEY=VALUE")]
        inputs: Vec<String>,
    },
    /// List runs, newest first.
    List {
        /// Only runs in this status (queued, compiling, waiting_input, executing, succeeded, failed…).
        #[arg(long)]
        status: Option<String>,
        /// How many runs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a run as a readable timeline of its steps and tasks.
    Status {
        /// Run id.
        run: String,
    },
    /// Approve a run waiting at its approval gate (you are the approver, by your user id).
    Approve {
        /// Run id.
        run: String,
        /// Bind the approval to this plan (the sha256 you reviewed); default: the run's current plan.
        #[arg(long)]
        plan: Option<String>,
    },
    /// Retry a failed run from its failed step.
    Retry {
        /// Run id.
        run: String,
    },
    /// Cancel a run.
    Cancel {
        /// Run id.
        run: String,
    },
    /// Follow a run's events live until it finishes; exits 0 if it succeeded.
    Watch {
        /// Run id.
        run: String,
        /// Give up after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout_secs: u64,
    },
    /// Stop claiming new tasks in a partition (running tasks finish).
    Pause {
        /// Partition key.
        partition: String,
    },
    /// Claim tasks in a paused partition again.
    Resume {
        /// Partition key.
        partition: String,
    },
    /// Show the service's properties (version, queue depth, workers online…).
    Info,
    /// Snapshots of the state directory (runs machina-snapshot as you; needs root).
    Snapshot {
        /// What to do with snapshots.
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Print the headers that sign an HTTP request (api.auth = "hmac", "either" or "both"),
    /// one per line, for `curl -H @-`.
    Sign {
        /// File holding the HMAC secret.
        #[arg(long)]
        secret_file: PathBuf,
        /// HTTP method.
        #[arg(long, default_value = "POST")]
        method: String,
        /// Path and query, e.g. /enqueue.
        #[arg(long)]
        path: String,
        /// File holding the exact body (- for standard input; none for an empty body).
        #[arg(long)]
        body: Option<PathBuf>,
    },
    /// Permission leases: single-use tokens that let one task use one tool above the free tier.
    Lease {
        /// What to do with leases.
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Print the running service's effective configuration (TOML, secrets redacted).
    Config,
    /// A conversation: say what you want done (or type commands), one message per line.
    ///
    /// Each message is understood by the judge model of [judge] (or by pattern without
    /// one), carried out over D-Bus like the other commands, and summed up in one line.
    /// Ends with quit, exit or end of input.
    Chat {
        /// A configuration drop-in directory to read [judge] from (repeatable; default: the
        /// system's). Credentials come from $CREDENTIALS_DIRECTORY, then judge.credentials_dir.
        #[arg(long = "config-dir", value_name = "DIR")]
        config_dirs: Vec<PathBuf>,
        /// Override judge.mode for this session.
        #[arg(long, value_enum)]
        mode: Option<crate::chat::ModeArg>,
        /// Time limit of each phase of a message (understanding, execution, summary).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
        phase_timeout_secs: u64,
        /// Do not ask a model: parse commands by pattern and sum up from templates.
        #[arg(long)]
        no_llm: bool,
    },
    /// Check the ledger's integrity; exits 1 if anything is wrong.
    Verify {
        /// Hash every artifact, not just the configured sample.
        #[arg(long)]
        full: bool,
    },
}

/// `machinactl lease …`.
#[derive(Debug, Clone, Subcommand)]
pub enum LeaseCommand {
    /// Issue a lease; prints its token once (give it to the task's intent, e.g. as an input).
    Issue {
        /// Tool it lets one task use (shell, http, file or a plugin's name).
        #[arg(long)]
        tool: String,
        /// The tool's tier (1 … 3); the lease is bound to it.
        #[arg(long)]
        tier: u8,
        /// Lifetime in seconds (default: leases.default_ttl_secs).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// List usable leases (never their tokens).
    List {
        /// Also spent, revoked and expired ones not yet collected.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an unspent lease.
    Revoke {
        /// Lease id.
        id: String,
    },
}

/// `machinactl snapshot …`.
#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// List snapshots, oldest first, with the active backend.
    List,
    /// Take a manual snapshot now (kept apart from the daily ones).
    Create {
        /// A label to recognise it by.
        #[arg(long)]
        label: Option<String>,
    },
    /// Keep a snapshot whatever retention says.
    Pin {
        /// Snapshot id.
        id: String,
    },
    /// Let retention delete a snapshot again.
    Unpin {
        /// Snapshot id.
        id: String,
    },
    /// Delete a snapshot (unpin it first if pinned).
    Delete {
        /// Snapshot id.
        id: String,
    },
    /// Replace the state with a snapshot's (the replaced state becomes a snapshot).
    Restore {
        /// Snapshot id.
        id: String,
        /// Stop the running machina units first and start them again afterwards
        /// (without it, a running machina is refused).
        #[arg(long)]
        stop: bool,
    },
}

impl SnapshotCommand {
    /// The machina-snapshot arguments for this command.
    pub fn to_args(&self) -> Vec<String> {
        let one = |verb: &str, id: &str| vec![verb.to_string(), id.to_string()];
        match self {
            Self::List => vec!["list".into()],
            Self::Create { label: None } => vec!["create".into()],
            Self::Create { label: Some(l) } => vec!["create".into(), "--label".into(), l.clone()],
            Self::Pin { id } => one("pin", id),
            Self::Unpin { id } => one("unpin", id),
            Self::Delete { id } => one("delete", id),
            Self::Restore { id, stop } => {
                let mut v = one("restore", id);
                if *stop {
                    v.push("--stop".into());
                }
                v
            }
        }
    }
}
