use std::process::ExitCode;

use clap::Parser;
use ferry::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = ferry::telemetry::init(cli.log_format, &cli.log_level) {
        eprintln!("ferry: cannot set up logging: {error:#}");
        return ExitCode::FAILURE;
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ferry: {error:#}");
            ExitCode::FAILURE
        }
    }
}
