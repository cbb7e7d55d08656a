use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sigil::cli::Cli::parse();
    match sigil::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigil: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
