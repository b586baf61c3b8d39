//! machina-task-exec: the tiny wrapper the worker spawns in front of every task's command.
//! It confines itself (landlock, rlimits, no_new_privs, no capabilities) and execs the task;
//! see the machina-sandbox crate.

fn main() -> std::process::ExitCode {
    machina_sandbox::exec_main()
}
