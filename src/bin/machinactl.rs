//! `machinactl`: the operator CLI (see crates/ctl).

fn main() -> std::process::ExitCode {
    machina_ctl::main()
}
