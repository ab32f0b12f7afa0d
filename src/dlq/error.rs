//! What can go wrong when a person works with the dead-letter table through `ferry dlq`.

use super::DeadLetterError;

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(transparent)]
    Store(#[from] DeadLetterError),
    #[error(
        "no dead-letter table {table:?} (or its history table) in that database: check --table and --url"
    )]
    MissingTable { table: String },
    #[error("cannot open the database --url names ({engine}): {source}")]
    Connect {
        engine: &'static str,
        source: DeadLetterError,
    },
    /// A flag's value that cannot be used; the message names the flag.
    #[error("{0}")]
    Input(String),
    #[error(
        "{action} needs an explicit selection: name at least one of --origin, --event-type, --fingerprint, --since, --until, --id, --seq, or pass --all"
    )]
    NoSelection { action: &'static str },
    #[error("no dead letter has seq or message id {0:?}{1}")]
    NotFound(String, String),
    #[error(
        "replay refused: {} selected dead letter(s) came from an outbox relay ({}), which cannot re-deliver them: they are outbox rows that could not be published (fix the row or the topic and insert it again, or discard them); narrow the selection with --origin consumer/...",
        .0.iter().map(|(_, count)| count).sum::<i64>(),
        .0.iter().map(|(origin, count)| format!("{origin}: {count}")).collect::<Vec<_>>().join(", ")
    )]
    NotReplayable(Vec<(String, i64)>),
}

impl DlqError {
    /// A stable, low-cardinality name for the kind of failure.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Store(_) => "database",
            Self::MissingTable { .. } => "missing_table",
            Self::Connect { .. } => "connect",
            Self::Input(_) => "bad_input",
            Self::NoSelection { .. } => "no_selection",
            Self::NotFound(..) => "not_found",
            Self::NotReplayable(_) => "not_replayable",
        }
    }
}

impl From<sqlx::Error> for DlqError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}
