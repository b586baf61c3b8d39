//! machina-api: the HTTP API process (see `machina_api::daemon`).

// The ledger's writer thread frees much of what other threads allocated; with glibc that
// was ~6% of its time under load, and mimalloc raised the ledger benchmark's enqueue 5-10%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    machina_api::daemon::main()
}
