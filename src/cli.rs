//! The `ferry` command line: argument definitions and what each subcommand does.

use std::{
    io::{Write, stdout},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};

use crate::{crd, manifest, telemetry::LogFormat, validate::SecretCheck};

/// Reliable messaging pipelines: transactional outbox, relay, idempotent consumers, retries and
/// dead-letter queues.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "FERRY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log level or filter (`info`, `ferry=debug`); `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "info", env = "FERRY_LOG_LEVEL")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per kind.
    Crd {
        /// Write `ferry.dev_<plural>.yaml` files into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<PathBuf>,
    },
    /// Check manifests as the API server and the operator would: schema, CEL rules, Ferry's
    /// own checks and references between objects. Exits 1 when anything is wrong.
    Validate {
        /// Files or folders of YAML manifests (folders are read recursively).
        #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Namespace for objects that do not name one.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Also require every Secret a connection names to be among the manifests, with the key.
        #[arg(long)]
        check_secrets: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crd { output_dir: None } => {
            write!(stdout().lock(), "{}", crd::all_crds_yaml()?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd {
            output_dir: Some(dir),
        } => {
            let mut out = stdout().lock();
            for file in crd::write_crd_files(&dir)? {
                writeln!(out, "wrote {}", dir.join(file.name).display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            paths,
            namespace,
            check_secrets,
        } => validate(&paths, &namespace, check_secrets),
    }
}

fn validate(paths: &[PathBuf], namespace: &str, check_secrets: bool) -> anyhow::Result<ExitCode> {
    let documents = manifest::load(paths)?;
    let secrets = if check_secrets {
        SecretCheck::Check
    } else {
        SecretCheck::Skip
    };
    let admitted = manifest::admit(&documents, namespace, secrets);
    let mut out = stdout().lock();
    for (origin, what) in &admitted.ignored {
        writeln!(out, "{origin}: skipped {what} (not a Ferry object)")?;
    }
    for problem in &admitted.problems {
        writeln!(out, "{problem}")?;
    }
    let catalog = &admitted.catalog;
    let accepted = catalog.outbox_sources.len()
        + catalog.broker_topics.len()
        + catalog.retry_policies.len()
        + catalog.dead_letter_queues.len()
        + catalog.consumers.len();
    if admitted.is_valid() {
        writeln!(
            out,
            "{accepted} Ferry objects valid, {} Secrets read",
            catalog.secrets.len()
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        let count = admitted.problems.len();
        writeln!(
            out,
            "{count} problem{} found",
            if count == 1 { "" } else { "s" }
        )?;
        Ok(ExitCode::FAILURE)
    }
}
