//! `ferry dlq`: list, show, group, replay, discard and purge the dead letters of a database
//! dead-letter queue.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use chrono::Utc;
use clap::Subcommand;

pub use super::args::{Connection, Decision, Filters, Output, StatusArg};
use super::{
    args::{actor, age_arg},
    discard::{discard, purge},
    error::DlqError,
    query::{self, Selection},
    render,
    replay::{self, ReplayProgress},
    table::TableStore,
    when,
};

/// How many letters `list` shows when `--limit` is not given.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// `replay` exit code: the request was recorded but some letters failed again (or were
/// discarded meanwhile).
pub const EXIT_NOT_ALL_REPLAYED: u8 = 1;
/// `replay` exit code: `--timeout` passed with letters still waiting to be delivered.
pub const EXIT_TIMED_OUT: u8 = 3;
/// How often `replay` looks at its request's progress.
const REPLAY_POLL: Duration = Duration::from_secs(1);
/// How many letters that failed again `replay` names at the end.
const FAILED_AGAIN_SHOWN: u32 = 10;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (those waiting for a decision, unless --status says otherwise), oldest
    /// first.
    List {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: Filters,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Show everything about a dead letter: fields, error, headers, body and history.
    Show {
        #[command(flatten)]
        connection: Connection,
        /// The letter's seq (as `list` shows it) or its message id.
        #[arg(value_name = "ID_OR_SEQ")]
        id: String,
        /// Only the letter of this origin (a message id may be dead-lettered by several).
        #[arg(long)]
        origin: Option<String>,
        /// `json` prints one object, or an array when several letters share the message id.
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Group dead letters that failed the same way (by fingerprint), largest group first.
    Stats {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: Filters,
        #[arg(short, long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Ask the consumers that gave up on the selected letters to deliver them again, and wait
    /// until they did. Exits 0 when every letter was replayed, 1 when some failed again, 3 when
    /// --timeout passed first. Letters from an outbox relay cannot be replayed.
    Replay {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: Filters,
        /// Select every letter of the --status (needed when no other filter is given).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        decision: Decision,
        /// Record the request and exit without waiting.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the consumers (e.g. 10m, 1h).
        #[arg(long, default_value = "10m", value_parser = age_arg)]
        timeout: Duration,
    },
    /// Mark the selected letters discarded: they will not be delivered. Nothing is deleted.
    Discard {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: Filters,
        /// Select every letter of the --status (needed when no other filter is given).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        decision: Decision,
    },
    /// Delete letters replayed or discarded longer ago than --older-than. Letters still waiting
    /// are never deleted; the history of purged letters stays.
    Purge {
        #[command(flatten)]
        connection: Connection,
        /// Resolved at least this long ago (e.g. 30d, 12h).
        #[arg(long, value_parser = age_arg)]
        older_than: Duration,
        /// Only letters of this origin (exact, or a glob with `*`).
        #[arg(long)]
        origin: Option<String>,
        /// Who purges, for the history (default: $USER).
        #[arg(long, value_name = "NAME")]
        by: Option<String>,
    },
}

/// Runs a `ferry dlq` command, printing to stdout and progress to stderr.
pub async fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    run_to(command, &mut std::io::stdout()).await
}

/// Runs a `ferry dlq` command, printing results to `out` (progress still goes to stderr).
pub async fn run_to(command: DlqCommand, out: &mut (dyn Write + Send)) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            connection,
            filters,
            output,
        } => {
            let mut selection = filters.selection(false)?;
            selection.limit = Some(selection.limit.unwrap_or(DEFAULT_LIST_LIMIT));
            let store = connection.open().await?;
            let letters = query::list(&store, &selection).await?;
            match output {
                Output::Json => {
                    let json: Vec<_> = letters.iter().map(render::letter_json).collect();
                    writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
                }
                Output::Text if letters.is_empty() => writeln!(out, "No dead letters match.")?,
                Output::Text => write!(out, "{}", render::letters_table(&letters))?,
            }
            if selection
                .limit
                .is_some_and(|limit| letters.len() as u64 == u64::from(limit))
            {
                let total = query::count(&store, &selection).await?;
                if total > letters.len() as i64 {
                    eprintln!(
                        "Showing the oldest {} of {total} matching dead letters; raise --limit or narrow the filters.",
                        letters.len()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Show {
            connection,
            id,
            origin,
            output,
        } => {
            let store = connection.open().await?;
            let letters = query::find(&store, &id, origin.as_deref()).await?;
            let mut details = Vec::with_capacity(letters.len());
            for letter in &letters {
                details.push((letter, query::history(&store, letter.seq).await?));
            }
            match output {
                Output::Json => {
                    let mut json: Vec<_> = details
                        .iter()
                        .map(|(letter, history)| render::letter_detail_json(letter, history))
                        .collect();
                    let json = if json.len() == 1 {
                        json.remove(0)
                    } else {
                        serde_json::Value::Array(json)
                    };
                    writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
                }
                Output::Text => {
                    for (position, (letter, history)) in details.iter().enumerate() {
                        if position > 0 {
                            writeln!(out)?;
                        }
                        write!(out, "{}", render::letter_detail(letter, history))?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Stats {
            connection,
            filters,
            output,
        } => {
            let selection = filters.selection(false)?;
            let store = connection.open().await?;
            let groups = query::stats(&store, &selection).await?;
            match output {
                Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&groups)?)?,
                Output::Text if groups.is_empty() => writeln!(out, "No dead letters match.")?,
                Output::Text => {
                    write!(out, "{}", render::groups_table(&groups))?;
                    let letters: i64 = groups.iter().map(|group| group.letters).sum();
                    writeln!(
                        out,
                        "{letters} dead letters in {} groups; `ferry dlq list --fingerprint F` lists a group.",
                        groups.len()
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Replay {
            connection,
            filters,
            all,
            decision,
            no_wait,
            timeout,
        } => {
            let selection = filters.selection(all)?;
            selection.require_explicit("replay")?;
            let store = connection.open().await?;
            let by = actor(decision.by);
            let request =
                replay::request(&store, &selection, &by, decision.note.as_deref()).await?;
            if request.letters == 0 {
                writeln!(
                    out,
                    "Nothing to replay: no selected dead letter is waiting (or replayed or discarded, when --status asks for those)."
                )?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "Requested replay of {} (request {}).",
                dead_letters(request.letters),
                request.id
            )?;
            if no_wait {
                return Ok(ExitCode::SUCCESS);
            }
            let progress = watch_with_progress(&store, &request.id, timeout).await?;
            report_replay(&store, &request.id, &progress, out).await
        }
        DlqCommand::Discard {
            connection,
            filters,
            all,
            decision,
        } => {
            let selection = filters.selection(all)?;
            selection.require_explicit("discard")?;
            let store = connection.open().await?;
            let by = actor(decision.by);
            let discarded = discard(&store, &selection, &by, decision.note.as_deref()).await?;
            writeln!(out, "Discarded {}.", dead_letters(discarded))?;
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Purge {
            connection,
            older_than,
            origin,
            by,
        } => {
            let cutoff = when::ago(Utc::now(), older_than)
                .ok_or_else(|| DlqError::Input("--older-than is too long ago".to_owned()))?;
            let store = connection.open().await?;
            let selection = Selection {
                origin,
                ..Selection::default()
            };
            let purged = purge(&store, &selection, cutoff, &actor(by)).await?;
            writeln!(
                out,
                "Purged {} resolved before {} ({} replayed, {} discarded); letters still waiting are kept.",
                dead_letters(purged.replayed + purged.discarded),
                render::time(cutoff),
                purged.replayed,
                purged.discarded
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dead_letters(count: u64) -> String {
    match count {
        1 => "1 dead letter".to_owned(),
        count => format!("{count} dead letters"),
    }
}

fn progress_line(progress: &ReplayProgress) -> String {
    format!(
        "replay: {}/{} replayed, {} replaying, {} not taken yet, {} failed again, {} discarded",
        progress.replayed,
        progress.total(),
        progress.replaying,
        progress.requested,
        progress.failed_again,
        progress.discarded
    )
}

/// Watches a request, keeping one progress line up to date on a terminal (a line per change
/// otherwise, for logs).
async fn watch_with_progress(
    store: &TableStore,
    request_id: &str,
    timeout: Duration,
) -> Result<ReplayProgress, DlqError> {
    let terminal = std::io::stderr().is_terminal();
    let progress = replay::watch(store, request_id, REPLAY_POLL, Some(timeout), |progress| {
        let mut stderr = std::io::stderr().lock();
        // Progress is a courtesy: a closed stderr must not fail the replay.
        let _ = if terminal {
            write!(stderr, "\r{}\x1b[K", progress_line(progress))
        } else {
            writeln!(stderr, "{}", progress_line(progress))
        };
    })
    .await?;
    if terminal {
        eprintln!();
    }
    Ok(progress)
}

async fn report_replay(
    store: &TableStore,
    request_id: &str,
    progress: &ReplayProgress,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<ExitCode> {
    if progress.all_replayed() {
        writeln!(out, "Replayed all {}.", dead_letters(progress.replayed))?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(out, "{}", progress_line(progress))?;
    if progress.failed_again > 0 {
        writeln!(out, "Failed again (waiting once more):")?;
        let failed = replay::failed_again(store, request_id, FAILED_AGAIN_SHOWN).await?;
        write!(out, "{}", render::letters_table(&failed))?;
    }
    if progress.pending() > 0 {
        writeln!(
            out,
            "Timed out with {} not delivered yet: is the consumer of their origin running? They stay requested; `ferry dlq list --status replay_requested,replaying` shows them.",
            dead_letters(progress.pending())
        )?;
        return Ok(ExitCode::from(EXIT_TIMED_OUT));
    }
    Ok(ExitCode::from(EXIT_NOT_ALL_REPLAYED))
}
