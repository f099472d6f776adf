//! Output: text for people (coloured on a terminal unless NO_COLOR is set), or JSON.

use std::io::IsTerminal;

use rocket_rides_log::{Entry, LogRecord, StreamId};
use serde_json::{Value, json};

/// Where a record was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stream,
    Archive,
}

/// `println!`, but a closed stdout (`| head`) ends the program quietly instead of panicking.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            panic!("cannot write to stdout: {e}");
        }
    }};
}

pub struct Printer {
    json: bool,
    colour: bool,
}

const DIM: &str = "2";
const BOLD: &str = "1";
const RED: &str = "31";
const CYAN: &str = "36";

impl Printer {
    pub fn new(json: bool) -> Self {
        let colour =
            !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self { json, colour }
    }

    /// `text` in an ANSI colour when colour is on.
    pub fn paint(&self, code: &str, text: impl std::fmt::Display) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn bold(&self, text: impl std::fmt::Display) -> String {
        self.paint(BOLD, text)
    }

    /// One stream entry of partition `p`.
    pub fn entry(&self, p: i32, entry: &Entry) {
        match &entry.record {
            Ok(record) => self.record(record, Source::Stream),
            Err(e) => {
                if self.json {
                    emit!(
                        "{}",
                        json!({"partition": p, "stream_id": entry.id.to_string(), "source": "stream", "error": e.to_string()})
                    );
                } else {
                    emit!(
                        "{} {} {}",
                        self.paint(CYAN, format!("p{p}")),
                        self.paint(DIM, entry.id),
                        self.paint(RED, format!("not a log record: {e}"))
                    );
                }
            }
        }
    }

    /// One record, from the stream or the archive.
    pub fn record(&self, r: &LogRecord, source: Source) {
        if self.json {
            emit!("{}", record_json(r, source));
            return;
        }
        let from = match source {
            Source::Stream => String::new(),
            Source::Archive => self.paint(DIM, "  (archive)"),
        };
        emit!(
            "{} {} seq {} epoch {} ride {} {} m{from}",
            self.paint(CYAN, format!("p{}", r.partition)),
            self.paint(DIM, StreamId::of_seq(r.seq)),
            self.bold(r.seq),
            r.epoch,
            r.ride_id,
            r.distance,
        );
    }

    /// A whole document: JSON, or the text `lines` render.
    pub fn document(&self, value: &Value, lines: impl FnOnce() -> Vec<String>) {
        if self.json {
            emit!("{value}");
        } else {
            for line in lines() {
                emit!("{line}");
            }
        }
    }
}

pub fn record_json(r: &LogRecord, source: Source) -> Value {
    json!({
        "partition": r.partition,
        "stream_id": StreamId::of_seq(r.seq).to_string(),
        "seq": r.seq,
        "epoch": r.epoch,
        "ride_id": r.ride_id,
        "distance": r.distance,
        "log": r.log,
        "traceparent": r.trace.traceparent,
        "source": match source { Source::Stream => "stream", Source::Archive => "archive" },
    })
}

/// A JSON value as a table cell: strings bare, null as "-".
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Pads cells into columns.
pub fn table(rows: &[Vec<String>]) -> Vec<String> {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["a".to_string(), "bb".to_string(), "c".to_string()],
            vec!["dddd".to_string(), "e".to_string(), "".to_string()],
        ];
        assert_eq!(table(&rows), vec!["a     bb  c", "dddd  e"]);
    }
}
