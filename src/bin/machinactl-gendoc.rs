//! `machinactl-gendoc OUT`: writes machinactl's man page and shell completions (build time only).

fn main() -> std::process::ExitCode {
    machina_ctl::gendoc_main()
}
