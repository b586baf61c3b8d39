//! machina-maintain: the hourly maintenance run (see crates/maintain).

fn main() -> std::process::ExitCode {
    machina_maintain::main()
}
