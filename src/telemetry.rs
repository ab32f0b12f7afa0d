//! Process setup: structured `tracing` events, as JSON lines (in a cluster) or text (a
//! terminal), and the TLS crypto provider.
//! While progress bars are on screen (`ferry run`, `ferry demo`), log lines are printed above
//! them instead of through them.

use std::{
    io::{self, IsTerminal, Write},
    sync::RwLock,
};

use clap::ValueEnum;
use indicatif::MultiProgress;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// lapin logs, at ERROR, every channel the server closes, and at WARN every returned message;
/// Ferry closes channels on purpose (passive declares that find nothing) and handles returns
/// itself (an unroutable message is dead-lettered with the reason), so both are noise.
const QUIET_DEPENDENCIES: &str = "lapin::channel=off,lapin::returned_messages=off";

/// Installs the global subscriber. `RUST_LOG` overrides `level` when set.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{level},{QUIET_DEPENDENCIES}")))?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(|| LogWriter))
            .try_init()?,
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(io::stderr().is_terminal())
                    .with_writer(|| LogWriter),
            )
            .try_init()?,
    }
    Ok(())
}

/// Picks rustls's crypto provider for the process. The clients bring two (lapin `aws-lc-rs`,
/// sqlx and async-nats `ring`), and a client that takes the process default (redis for
/// `rediss://`) cannot choose between them: it would panic on its first TLS connection.
/// Called once at start, before any connection.
pub fn choose_tls_crypto() {
    // An error only means a provider is already installed, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

static BARS: RwLock<Option<MultiProgress>> = RwLock::new(None);

/// Prints log lines above `bars` until `clear_progress_bars` (one set of bars at a time).
pub fn show_logs_above(bars: &MultiProgress) {
    if let Ok(mut slot) = BARS.write() {
        *slot = Some(bars.clone());
    }
}

pub fn clear_progress_bars() {
    if let Ok(mut slot) = BARS.write() {
        *slot = None;
    }
}

/// Standard error, or the line above the progress bars while they are drawn. The formatter
/// writes each event with one `write_all`, so lines are not split.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bars = BARS.read().ok().and_then(|slot| slot.clone());
        match bars {
            Some(bars) if !bars.is_hidden() => {
                let text = String::from_utf8_lossy(buf);
                bars.println(text.trim_end_matches('\n'))?;
                Ok(buf.len())
            }
            _ => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
