//! How `ferry dlq` shows dead letters: aligned text tables for people, JSON for scripts.

use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::{history::HistoryEntry, query::FailureGroup, record::StoredLetter};

/// The most of an error a table row shows.
const ERROR_EXCERPT_CHARS: usize = 60;

/// Columns separated by two spaces, each as wide as its widest cell; the last is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (position, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if position == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

pub fn time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn optional_time(time: Option<DateTime<Utc>>) -> String {
    time.map(self::time).unwrap_or_default()
}

/// The first line of `text`, at most `max` characters.
pub fn excerpt(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    if line.chars().count() > max {
        line.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    } else if text.lines().nth(1).is_some() {
        format!("{line} …")
    } else {
        line.to_owned()
    }
}

/// `list` as a table.
pub fn letters_table(letters: &[StoredLetter]) -> String {
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|stored| {
            let letter = &stored.letter;
            vec![
                stored.seq.to_string(),
                letter.origin.clone(),
                letter.message_id.clone(),
                letter.event_type.clone(),
                letter.attempts.to_string(),
                time(letter.last_failed_at),
                letter.error_category.clone(),
                stored.status.to_string(),
                excerpt(&letter.last_error, ERROR_EXCERPT_CHARS),
            ]
        })
        .collect();
    table(
        &[
            "SEQ",
            "ORIGIN",
            "MESSAGE ID",
            "EVENT TYPE",
            "ATTEMPTS",
            "LAST FAILURE",
            "CATEGORY",
            "STATUS",
            "ERROR",
        ],
        &rows,
    )
}

/// A letter's fields without its headers and body, as `list -o json` prints each.
pub fn letter_json(stored: &StoredLetter) -> Json {
    let letter = &stored.letter;
    json!({
        "seq": stored.seq,
        "origin": letter.origin,
        "message_id": letter.message_id,
        "event_type": letter.event_type,
        "message_key": letter.message_key,
        "status": stored.status.as_str(),
        "attempts": letter.attempts,
        "first_failed_at": letter.first_failed_at,
        "last_failed_at": letter.last_failed_at,
        "error_category": letter.error_category,
        "http_status": letter.http_status,
        "fingerprint": letter.fingerprint,
        "last_error": letter.last_error,
        "replay_count": stored.replay_count,
        "requested_at": stored.requested_at,
        "requested_by": stored.requested_by,
        "replay_request": stored.replay_request,
        "lease_until": stored.lease_until,
        "resolved_at": stored.resolved_at,
        "resolved_by": stored.resolved_by,
        "note": stored.note,
    })
}

/// The body as people read it: pretty JSON when it is JSON, else text with control characters
/// escaped, else every non-ASCII byte escaped.
pub fn body_text(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<Json>(body) {
        return serde_json::to_string_pretty(&json).unwrap_or_default();
    }
    match std::str::from_utf8(body) {
        Ok(text) => text
            .chars()
            .map(|c| {
                if c.is_control() && c != '\n' && c != '\t' {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        Err(_) => body.escape_ascii().to_string(),
    }
}

fn history_json(history: &[HistoryEntry]) -> Json {
    Json::Array(
        history
            .iter()
            .map(|entry| {
                json!({
                    "action": entry.action.as_str(),
                    "at": entry.at,
                    "by": entry.actor,
                    "note": entry.note,
                })
            })
            .collect(),
    )
}

/// Everything about a letter, as `show -o json` prints it. The body is JSON when it is JSON,
/// `body_text` when it is other text, `body_hex` otherwise.
pub fn letter_detail_json(stored: &StoredLetter, history: &[HistoryEntry]) -> Json {
    let mut detail = letter_json(stored);
    let letter = &stored.letter;
    if let Json::Object(fields) = &mut detail {
        fields.insert(
            "headers".into(),
            Json::Array(
                letter
                    .headers
                    .iter()
                    .map(|(name, value)| json!({"name": name, "value": value}))
                    .collect(),
            ),
        );
        if let Ok(body) = serde_json::from_slice::<Json>(&letter.body) {
            fields.insert("body".into(), body);
        } else if let Ok(text) = std::str::from_utf8(&letter.body) {
            fields.insert("body_text".into(), Json::String(text.to_owned()));
        } else {
            let hex: String = letter
                .body
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            fields.insert("body_hex".into(), Json::String(hex));
        }
        fields.insert("history".into(), history_json(history));
    }
    detail
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}\n"))
        .collect::<String>()
}

/// Everything about a letter, for people.
pub fn letter_detail(stored: &StoredLetter, history: &[HistoryEntry]) -> String {
    let letter = &stored.letter;
    let mut fields = vec![
        ("origin", letter.origin.clone()),
        ("message id", letter.message_id.clone()),
        ("event type", letter.event_type.clone()),
        ("key", letter.message_key.clone()),
        ("attempts", letter.attempts.to_string()),
        ("first failed", time(letter.first_failed_at)),
        ("last failed", time(letter.last_failed_at)),
        (
            "category",
            match letter.http_status {
                Some(status) => format!("{} (HTTP {status})", letter.error_category),
                None => letter.error_category.clone(),
            },
        ),
        ("fingerprint", letter.fingerprint.clone()),
        ("replays", stored.replay_count.to_string()),
    ];
    if let Some(request) = &stored.replay_request {
        fields.push((
            "replay request",
            format!(
                "{request} by {} at {}",
                stored.requested_by.as_deref().unwrap_or("?"),
                optional_time(stored.requested_at)
            ),
        ));
    }
    if let Some(lease) = stored.lease_until {
        fields.push(("lease until", time(lease)));
    }
    if let Some(resolved) = stored.resolved_at {
        fields.push((
            "resolved",
            format!(
                "{} by {} at {}",
                stored.status,
                stored.resolved_by.as_deref().unwrap_or("?"),
                time(resolved)
            ),
        ));
    }
    if let Some(note) = &stored.note {
        fields.push(("note", note.clone()));
    }
    let mut text = format!("Dead letter {} ({})\n", stored.seq, stored.status);
    for (name, value) in fields {
        text.push_str(&format!("  {:<15} {value}\n", format!("{name}:")));
    }
    text.push_str("Error:\n");
    text.push_str(&indent(&letter.last_error));
    text.push_str("Headers:\n");
    for (name, value) in &letter.headers {
        text.push_str(&format!("  {name}: {value}\n"));
    }
    text.push_str(&format!("Body ({} bytes):\n", letter.body.len()));
    text.push_str(&indent(&body_text(&letter.body)));
    text.push_str("History:\n");
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|entry| {
            vec![
                time(entry.at),
                entry.action.to_string(),
                entry.actor.clone(),
                entry.note.clone().unwrap_or_default(),
            ]
        })
        .collect();
    text.push_str(&indent(&table(&["AT", "ACTION", "BY", "NOTE"], &rows)));
    text
}

/// `stats` as a table.
pub fn groups_table(groups: &[FailureGroup]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|group| {
            vec![
                group.letters.to_string(),
                group.fingerprint.clone(),
                group.origin.clone(),
                group.event_type.clone(),
                group.error_category.clone(),
                time(group.first_failed_at),
                time(group.last_failed_at),
                format!(
                    "seq {}: {}",
                    group.example_seq,
                    excerpt(&group.example_error, ERROR_EXCERPT_CHARS)
                ),
            ]
        })
        .collect();
    table(
        &[
            "LETTERS",
            "FINGERPRINT",
            "ORIGIN",
            "EVENT TYPE",
            "CATEGORY",
            "FIRST FAILURE",
            "LAST FAILURE",
            "EXAMPLE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A     BB\nlong  x\ns     y\n");
    }

    #[test]
    fn bodies_are_pretty_json_or_escaped_text() {
        assert_eq!(body_text(br#"{"a":1}"#), "{\n  \"a\": 1\n}");
        assert_eq!(body_text(b"line\x07bell"), "line\\u{7}bell");
        assert_eq!(body_text(&[0xff, b'a']), "\\xffa");
    }

    #[test]
    fn excerpts_keep_the_first_line_and_say_when_they_cut() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("0123456789abc", 10), "012345678…");
        assert_eq!(excerpt("first\nsecond", 10), "first …");
    }
}
