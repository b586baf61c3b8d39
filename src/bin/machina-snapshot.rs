//! machina-snapshot: snapshots of machina's state (see crates/snapshot).

fn main() -> std::process::ExitCode {
    machina_snapshot::cli::main()
}
