//! Rows written with `COPY <table> (<columns>) FROM STDIN` in Postgres's text format: what a
//! replay's bulk load uses for a fresh table (one statement, no per-row planning, no conflict
//! checks), sent in chunks of about a megabyte.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgConnection;
use std::fmt::Write as _;

/// Bytes sent per `CopyData` message.
const CHUNK: usize = 1 << 20;

/// The text-format rows of one `COPY`, streamed to the server as they fill up.
pub struct CopyIn<'c> {
    copy: sqlx::postgres::PgCopyIn<&'c mut PgConnection>,
    buf: String,
    first_field: bool,
}

impl<'c> CopyIn<'c> {
    /// Starts `COPY table (columns) FROM STDIN` (`table` and `columns` are code, never input).
    pub async fn start(conn: &'c mut PgConnection, table: &str, columns: &str) -> Result<Self, sqlx::Error> {
        let copy = conn
            .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
            .await?;
        Ok(CopyIn {
            copy,
            buf: String::with_capacity(CHUNK + 4096),
            first_field: true,
        })
    }

    fn separate(&mut self) {
        if !self.first_field {
            self.buf.push('\t');
        }
        self.first_field = false;
    }

    /// A text field, escaped for the text format (backslash, tab, newline, carriage return).
    pub fn text(&mut self, s: &str) {
        self.separate();
        escape_into(&mut self.buf, s);
    }

    /// A field whose text form never needs escaping (numbers, UUIDs).
    pub fn plain(&mut self, v: impl std::fmt::Display) {
        self.separate();
        let _ = write!(self.buf, "{v}");
    }

    /// A NULL, or the field.
    pub fn plain_or_null(&mut self, v: Option<impl std::fmt::Display>) {
        match v {
            Some(v) => self.plain(v),
            None => {
                self.separate();
                self.buf.push_str("\\N");
            }
        }
    }

    /// A timestamp with microseconds (what `timestamptz` keeps) and its offset.
    pub fn timestamp(&mut self, t: DateTime<Utc>) {
        self.separate();
        self.buf.push_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true));
    }

    /// A `bigint[]` in array literal form.
    pub fn bigint_array(&mut self, v: &[i64]) {
        self.separate();
        self.buf.push('{');
        for (i, x) in v.iter().enumerate() {
            if i > 0 {
                self.buf.push(',');
            }
            let _ = write!(self.buf, "{x}");
        }
        self.buf.push('}');
    }

    /// Ends the current row; sends the buffer when it is full.
    pub async fn end_row(&mut self) -> Result<(), sqlx::Error> {
        self.buf.push('\n');
        self.first_field = true;
        if self.buf.len() >= CHUNK {
            self.copy.send(self.buf.as_bytes()).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Sends what is left and ends the `COPY`; returns the rows written.
    pub async fn finish(mut self) -> Result<u64, sqlx::Error> {
        if !self.buf.is_empty() {
            self.copy.send(self.buf.as_bytes()).await?;
        }
        self.copy.finish().await
    }
}

/// Appends `s` escaped for the text format: backslash, tab, newline and carriage return
/// would otherwise end or change the field.
fn escape_into(buf: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_fields_escape_what_the_format_reserves() {
        let mut buf = String::new();
        super::escape_into(&mut buf, "a\\b\tc\nd\re\"f\u{e9}");
        assert_eq!(buf, "a\\\\b\\tc\\nd\\re\"f\u{e9}");
    }
}
