//! Statements' texts: read once per queryid (from pg_stat_statements(true),
//! for those queryids alone), cut as pg_stat_activity cuts texts, masked and
//! fingerprinted as its texts are, so that load and statistics join.

use std::collections::HashMap;

use super::delta::{Counters, Key};
use super::sql::Ready;
use super::{MAX_TEXT_BYTES, ReadError, chain, read_error};
use crate::sampler::query_text::{self, QueryText};

/// The most queryids whose fingerprint the agent remembers; past it, it
/// starts afresh (and sends texts again).
const MAX_KNOWN: usize = 20_000;

/// The queryids whose text was sent, with their fingerprints.
#[derive(Debug)]
pub struct Texts {
    known: HashMap<i64, u64>,
    mode: QueryText,
}

impl Texts {
    /// Texts sent as `mode` says (the fingerprint whatever the mode).
    pub fn new(mode: QueryText) -> Self {
        Texts {
            known: HashMap::new(),
            mode,
        }
    }

    /// The fingerprint of `query_id`'s text; 0 when not known (its text was
    /// not read yet).
    pub fn fingerprint(&self, query_id: i64) -> u64 {
        self.known.get(&query_id).copied().unwrap_or(0)
    }

    /// `query_id`'s text did not reach the collector: it is sent again.
    pub fn forget(&mut self, query_id: i64) {
        self.known.remove(&query_id);
    }

    /// The queryids of `top` whose text was not sent yet, each once.
    pub fn wanted(&mut self, top: &[(Key, Counters)]) -> Vec<i64> {
        if self.known.len() + top.len() > MAX_KNOWN {
            self.known.clear();
        }
        let mut wanted: Vec<i64> = top
            .iter()
            .map(|(k, _)| k.query_id)
            .filter(|q| !self.known.contains_key(q))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }

    /// Masks and fingerprints the texts read (a queryid may come for
    /// several databases and users: its first text is taken), each cut to
    /// `text_bytes`, within [`MAX_TEXT_BYTES`] (the rest wait for a later
    /// read, their fingerprint unknown until then), and remembers their
    /// fingerprints.
    pub fn take<'a>(
        &mut self,
        read: impl IntoIterator<Item = (i64, &'a str)>,
        text_bytes: usize,
    ) -> HashMap<i64, String> {
        let mut out = HashMap::new();
        let mut bytes = 0;
        for (query_id, raw) in read {
            if out.contains_key(&query_id) || self.known.contains_key(&query_id) {
                continue;
            }
            let raw = cut(raw, text_bytes);
            if bytes + raw.len() > MAX_TEXT_BYTES {
                continue;
            }
            bytes += raw.len();
            let (text, fingerprint) = query_text::prepare(raw, self.mode);
            self.known.insert(query_id, fingerprint);
            out.insert(query_id, text);
        }
        out
    }

    /// Reads, masks and fingerprints the texts of the queryids of `top` not
    /// sent yet.
    pub async fn read(
        &mut self,
        client: &deadpool_postgres::Client,
        ready: &Ready,
        top: &[(Key, Counters)],
    ) -> Result<HashMap<i64, String>, ReadError> {
        let wanted = self.wanted(top);
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let chars = i32::try_from(ready.text_bytes).unwrap_or(i32::MAX);
        let rows = async {
            let statement = client.prepare_cached(&ready.texts_sql).await?;
            client.query(&statement, &[&wanted, &chars]).await
        }
        .await
        .map_err(|e| read_error(&e, &ready.database))?;
        let mut read = Vec::with_capacity(rows.len());
        for row in &rows {
            let query_id: i64 = row.try_get(0).map_err(|e| ReadError::Other(chain(&e)))?;
            let text: Option<&str> = row.try_get(1).map_err(|e| ReadError::Other(chain(&e)))?;
            if let Some(text) = text {
                read.push((query_id, text));
            }
        }
        Ok(self.take(read, ready.text_bytes))
    }
}

/// At most `max` bytes of `text`, cut at a character's boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
