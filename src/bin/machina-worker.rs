//! machina-worker: one worker process (see `machina_worker::daemon`).

fn main() -> std::process::ExitCode {
    machina_worker::daemon::main()
}
