//! machina-task-exec: the tiny wrapper the worker spawns in front of a task's command. It
//! confines itself (landlock, rlimits, no_new_privs, no capabilities) and execs the task.
//! With `--serve` it is the worker's spawner instead: started once, it forks each task and
//! confines the child the same way. See the machina-sandbox crate.

fn main() -> std::process::ExitCode {
    machina_sandbox::exec_main()
}
