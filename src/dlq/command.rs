//! `ferry dlq`: list, show, group, replay, discard and purge the dead letters of a database
//! dead-letter queue.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};

use super::{
    discard::{discard, purge},
    error::DlqError,
    query::{self, Selection},
    record::Status,
    render,
    replay::{self, ReplayProgress},
    table::TableStore,
    when,
};
use crate::api::{DatabaseEngine, dead_letter_queue::DEFAULT_DEAD_LETTER_TABLE};

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

/// Where the dead-letter table is.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The database: postgres://..., mysql://... or sqlite:PATH.
    #[arg(long, env = "FERRY_DLQ_URL", hide_env_values = true)]
    pub url: String,
    /// The dead-letter table, optionally `schema.table`.
    #[arg(long, default_value = DEFAULT_DEAD_LETTER_TABLE, value_parser = table_arg)]
    pub table: String,
}

/// Which dead letters: the filters every subcommand shares.
#[derive(Debug, Clone, Args)]
pub struct Filters {
    /// Who gave up on them, e.g. consumer/shop/inventory (a glob with `*` is allowed).
    #[arg(long, value_parser = non_empty_arg)]
    pub origin: Option<String>,
    /// Their event type, e.g. order.created or a glob such as order.*.
    #[arg(long, value_parser = non_empty_arg)]
    pub event_type: Option<String>,
    /// Failed the same way as this fingerprint (16 hex digits, as `stats` shows).
    #[arg(long, value_parser = fingerprint_arg)]
    pub fingerprint: Option<String>,
    /// Last failed at or after: RFC 3339, a date, or an age such as 2h (that long ago).
    #[arg(long, value_parser = time_arg)]
    pub since: Option<DateTime<Utc>>,
    /// Last failed before: RFC 3339, a date, or an age such as 30m (that long ago).
    #[arg(long, value_parser = time_arg)]
    pub until: Option<DateTime<Utc>>,
    /// Their status; repeat or separate with commas. `any` selects every status.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "waiting")]
    pub status: Vec<StatusArg>,
    /// A message id (repeatable).
    #[arg(long = "id", value_name = "MESSAGE_ID", value_parser = non_empty_arg)]
    pub ids: Vec<String>,
    /// A letter's seq (repeatable).
    #[arg(long = "seq", value_name = "SEQ")]
    pub seqs: Vec<i64>,
    /// At most this many letters (for `stats`, groups), oldest first.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// Who decides, and why.
#[derive(Debug, Clone, Args)]
pub struct Decision {
    /// Who decides, for the history (default: $USER).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Why, kept with the letters and in their history.
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusArg {
    Waiting,
    #[value(name = "replay_requested", alias = "replay-requested")]
    ReplayRequested,
    Replaying,
    Replayed,
    Discarded,
    Any,
}

impl Filters {
    /// The selection these flags describe; `all` is the command's `--all`.
    pub fn selection(&self, all: bool) -> Result<Selection, DlqError> {
        if let (Some(since), Some(until)) = (self.since, self.until)
            && since >= until
        {
            return Err(DlqError::Input(format!(
                "--since ({}) must be before --until ({})",
                since.to_rfc3339(),
                until.to_rfc3339()
            )));
        }
        let statuses = if self.status.contains(&StatusArg::Any) {
            Vec::new()
        } else {
            self.status
                .iter()
                .filter_map(|status| match status {
                    StatusArg::Waiting => Some(Status::Waiting),
                    StatusArg::ReplayRequested => Some(Status::ReplayRequested),
                    StatusArg::Replaying => Some(Status::Replaying),
                    StatusArg::Replayed => Some(Status::Replayed),
                    StatusArg::Discarded => Some(Status::Discarded),
                    StatusArg::Any => None,
                })
                .collect()
        };
        Ok(Selection {
            origin: self.origin.clone(),
            event_type: self.event_type.clone(),
            fingerprint: self.fingerprint.clone(),
            since: self.since,
            until: self.until,
            statuses,
            message_ids: self.ids.clone(),
            seqs: self.seqs.clone(),
            limit: self.limit,
            all,
        })
    }
}

fn age_arg(text: &str) -> Result<Duration, String> {
    when::parse_age(text).map_err(|error| error.to_string())
}

fn time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    when::parse_time(text, Utc::now()).map_err(|error| error.to_string())
}

fn non_empty_arg(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(text.to_owned())
    }
}

fn fingerprint_arg(text: &str) -> Result<String, String> {
    let text = text.trim().to_ascii_lowercase();
    if text.len() == 16 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(text)
    } else {
        Err("a fingerprint is 16 hex digits, as `ferry dlq stats` shows".to_owned())
    }
}

fn table_arg(text: &str) -> Result<String, String> {
    static PATTERN: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(crate::api::common::TABLE_NAME_PATTERN).ok());
    match PATTERN.as_ref() {
        Some(pattern) if pattern.is_match(text) => Ok(text.to_owned()),
        _ => Err(
            "a table name is letters, digits and `_` (not starting with a digit), optionally `schema.table`"
                .to_owned(),
        ),
    }
}

/// The engine a URL's scheme names, and the URL as the driver takes it. Errors name `--url`
/// but never repeat the URL, which may hold a password.
pub fn engine_of(url: &str) -> Result<(DatabaseEngine, String), DlqError> {
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let engine = [
        DatabaseEngine::Postgres,
        DatabaseEngine::Mysql,
        DatabaseEngine::Sqlite,
    ]
    .into_iter()
    .find(|engine| engine.url_schemes().contains(&scheme.as_str()))
    .ok_or_else(|| {
        DlqError::Input(format!(
            "--url: unknown scheme {scheme:?}: use postgres://..., mysql://... or sqlite:PATH"
        ))
    })?;
    // The MySQL driver knows only `mysql://`; MariaDB speaks the same protocol.
    let url = match url.get(..10) {
        Some(prefix) if prefix.eq_ignore_ascii_case("mariadb://") => {
            format!("mysql://{}", &url[10..])
        }
        _ => url.to_owned(),
    };
    Ok((engine, url))
}

/// Who acts, for the history: `--by`, else `$USER`.
fn actor(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("USERNAME").ok())
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn open(connection: &Connection) -> Result<TableStore, DlqError> {
    let (engine, url) = engine_of(&connection.url)?;
    let store = TableStore::connect_existing(engine, &url, &connection.table).await?;
    if !store.tables_exist().await? {
        return Err(DlqError::MissingTable {
            table: connection.table.clone(),
        });
    }
    Ok(store)
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
            let store = open(&connection).await?;
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
            let store = open(&connection).await?;
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
            let store = open(&connection).await?;
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
            let store = open(&connection).await?;
            let by = actor(decision.by);
            let request =
                replay::request(&store, &selection, &by, decision.note.as_deref()).await?;
            if request.letters == 0 {
                writeln!(out, "No dead letters match; nothing to replay.")?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "Requested replay of {} dead letters (request {}).",
                request.letters, request.id
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
            let store = open(&connection).await?;
            let by = actor(decision.by);
            let discarded = discard(&store, &selection, &by, decision.note.as_deref()).await?;
            writeln!(out, "Discarded {discarded} dead letters.")?;
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
            let store = open(&connection).await?;
            let selection = Selection {
                origin,
                ..Selection::default()
            };
            let purged = purge(&store, &selection, cutoff, &actor(by)).await?;
            writeln!(
                out,
                "Purged {} dead letters resolved before {} ({} replayed, {} discarded); letters still waiting are kept.",
                purged.replayed + purged.discarded,
                render::time(cutoff),
                purged.replayed,
                purged.discarded
            )?;
            Ok(ExitCode::SUCCESS)
        }
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
        writeln!(out, "All {} dead letters were replayed.", progress.replayed)?;
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
            "Timed out with {} dead letters not delivered yet: is the consumer of their origin running? They stay requested; `ferry dlq list --status replay_requested,replaying` shows them.",
            progress.pending()
        )?;
        return Ok(ExitCode::from(EXIT_TIMED_OUT));
    }
    Ok(ExitCode::from(EXIT_NOT_ALL_REPLAYED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_engine_and_errors_do_not_repeat_them() {
        assert_eq!(
            engine_of("postgres://u:p@h/db")
                .map(|(engine, _)| engine)
                .ok(),
            Some(DatabaseEngine::Postgres)
        );
        assert_eq!(
            engine_of("sqlite:/tmp/x.db").map(|(engine, _)| engine).ok(),
            Some(DatabaseEngine::Sqlite)
        );
        assert_eq!(
            engine_of("mariadb://root@h/db").ok(),
            Some((DatabaseEngine::Mysql, "mysql://root@h/db".to_owned()))
        );
        let error = engine_of("http://user:secret@h").map(drop);
        let message = error
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        assert!(
            message.starts_with("--url: unknown scheme \"http\""),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
    }
}
