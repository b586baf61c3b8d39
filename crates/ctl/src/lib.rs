//! machinactl: the operator CLI over machina's D-Bus interface (org.machina.Manager1).
//!
//! Every command is one or two D-Bus calls; `--output json` prints what the
//! service returned, unchanged. Exit statuses are documented in [`exit`].

pub mod chat;
pub mod cli;
pub mod commands;
pub mod docs;
pub mod exit;
pub mod render;

use clap::Parser;
use std::process::ExitCode;

/// Entry point of `machinactl`.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("machinactl: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(status) => ExitCode::from(status),
        Err(e) => {
            eprintln!("machinactl: {e}");
            ExitCode::from(e.status)
        }
    }
}

/// Entry point of `machinactl-gendoc OUT` (build time only).
pub fn gendoc_main() -> ExitCode {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: machinactl-gendoc OUT_DIR");
        return ExitCode::from(2);
    };
    match docs::generate(std::path::Path::new(&out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machinactl-gendoc: {e}");
            ExitCode::FAILURE
        }
    }
}
