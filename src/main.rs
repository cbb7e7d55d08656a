use clap::Parser;

/// Threads of tokio's blocking pool per core. CRL builds, key generation on the client side
/// and file operations run there; tokio would otherwise start a thread for every task waiting
/// (up to 512), each with its own stack and allocator cache, for work that runs no faster on
/// more threads than there are cores.
const BLOCKING_THREADS_PER_CORE: usize = 2;

fn main() -> std::process::ExitCode {
    let cli = sigil::cli::Cli::parse();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_PER_CORE * cores)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sigil: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sigil::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigil: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
