//! machina-api: the HTTP API process (see `machina_api::daemon`).

fn main() -> std::process::ExitCode {
    machina_api::daemon::main()
}
