use std::process::ExitCode;

use clap::Parser;
use ferry::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry::telemetry::choose_tls_crypto();
    if let Err(error) = ferry::telemetry::init(cli.log_format, cli.log_level()) {
        eprintln!("ferry: cannot set up logging: {error:#}");
        return ExitCode::FAILURE;
    }
    match cli::run(cli).await {
        Ok(code) => code,
        // `ferry crd | head` closing the pipe early is not an error worth a message.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
