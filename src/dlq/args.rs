//! The flags of `ferry dlq`: where the table is, which letters, who decides; each value is
//! checked where it is parsed, so an error names its flag.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};

use super::{error::DlqError, query::Selection, record::Status, render, table::TableStore, when};
use crate::api::{DatabaseEngine, dead_letter_queue::DEFAULT_DEAD_LETTER_TABLE};

/// Where the dead-letter table is.
#[derive(Clone, Args)]
pub struct Connection {
    /// The database: postgres://..., mysql://... or sqlite:PATH.
    #[arg(long, env = "FERRY_DLQ_URL", hide_env_values = true)]
    pub url: String,
    /// The dead-letter table, optionally `schema.table`.
    #[arg(long, default_value = DEFAULT_DEAD_LETTER_TABLE, value_parser = table_arg)]
    pub table: String,
}

/// Shows the URL's scheme only: the rest may hold a password.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.url.split(':').next().unwrap_or_default();
        f.debug_struct("Connection")
            .field("url", &format_args!("{scheme}:..."))
            .field("table", &self.table)
            .finish()
    }
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
                render::time(since),
                render::time(until)
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

pub(crate) fn age_arg(text: &str) -> Result<Duration, String> {
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
pub fn actor(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("USERNAME").ok())
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Connection {
    /// Connects to the dead-letter table, which must exist.
    pub async fn open(&self) -> Result<TableStore, DlqError> {
        let (engine, url) = engine_of(&self.url)?;
        let store = TableStore::connect_existing(engine, &url, &self.table)
            .await
            .map_err(|source| DlqError::Connect {
                engine: engine.as_str(),
                source,
            })?;
        if !store.tables_exist().await? {
            return Err(DlqError::MissingTable {
                table: self.table.clone(),
            });
        }
        Ok(store)
    }
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

    #[test]
    fn a_connection_prints_without_its_password() {
        let connection = Connection {
            url: "postgres://ferry:secret@db/app".into(),
            table: "ferry_dead_letters".into(),
        };
        let printed = format!("{connection:?}");
        assert!(printed.contains("postgres:..."), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
    }
}
