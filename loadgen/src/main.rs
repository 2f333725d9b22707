use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = surge_loadgen::Cli::parse();
    match surge_loadgen::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("surge-loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
