use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = surge_cli::Cli::parse();
    match surge_cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
