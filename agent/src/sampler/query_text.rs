//! Query text as the agent ships it: masked (literals replaced by `?`), raw, or
//! left out; and a fingerprint that groups the same statement with other values.
//!
//! The masker is a small lexer of PostgreSQL's SQL. It knows every kind of
//! literal (`'…'`, `E'…'`, `N'…'`, `U&'…'`, `B'…'`, `X'…'`, `$tag$…$tag$`, numbers,
//! `TRUE`/`FALSE`), and leaves identifiers (also `"…"`), comments, operators and
//! `$n` parameters exactly where they were. It never fails: PostgreSQL cuts query
//! text at `track_activity_query_size`, so a literal may never end, and then the
//! rest of the text is that literal's placeholder.

use std::str::FromStr;

/// What the agent sends of each session's query text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryText {
    /// Literals replaced by `?` (the default: values can be personal data).
    #[default]
    Masked,
    /// The text as PostgreSQL shows it.
    Raw,
    /// No text at all; the fingerprint is still sent.
    None,
}

impl FromStr for QueryText {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        pgfleet_common::settings::parse_choice(
            "a query_text mode",
            s,
            &[
                ("masked", Self::Masked),
                ("raw", Self::Raw),
                ("none", Self::None),
            ],
        )
    }
}

/// The placeholder that stands for every literal.
pub const PLACEHOLDER: &str = "?";

/// The text to send for `query` in `mode`, and its fingerprint (0 for no text).
pub fn prepare(query: &str, mode: QueryText) -> (String, u64) {
    if query.is_empty() {
        return (String::new(), 0);
    }
    let masked = mask(query);
    let fp = fingerprint_of_masked(&masked);
    let text = match mode {
        QueryText::Masked => masked,
        QueryText::Raw => query.to_owned(),
        QueryText::None => String::new(),
    };
    (text, fp)
}

/// A 64-bit FNV-1a hash of the masked text with its whitespace runs folded to one
/// space, so the same statement with other values (or other line breaks) gets the
/// same fingerprint on every agent and every version. Never 0 for a non-empty
/// text, so 0 can mean "none".
pub fn fingerprint_of_masked(masked: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut in_space = true; // leading whitespace is dropped
    for &b in masked.as_bytes() {
        if b.is_ascii_whitespace() {
            in_space = true;
            continue;
        }
        if in_space && hash != OFFSET {
            hash = (hash ^ u64::from(b' ')).wrapping_mul(PRIME);
        }
        in_space = false;
        hash = (hash ^ u64::from(b)).wrapping_mul(PRIME);
    }
    hash.max(1)
}

/// Replaces every literal of `sql` with [`PLACEHOLDER`].
pub fn mask(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    // Start of the text not yet copied to `out`.
    let mut copied = 0;
    let replace = |out: &mut String, copied: &mut usize, start: usize, end: usize| {
        out.push_str(&sql[*copied..start]);
        out.push_str(PLACEHOLDER);
        *copied = end;
    };
    while i < b.len() {
        let c = b[i];
        let prev_is_word = i > 0 && is_word(b[i - 1]);
        match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = find_byte(b, i, b'\n').unwrap_or(b.len());
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'"' => i = skip_quoted(b, i + 1, b'"', false),
            b'\'' => {
                let end = skip_quoted(b, i + 1, b'\'', false);
                replace(&mut out, &mut copied, i, end);
                i = end;
            }
            b'$' => {
                if let Some(tag_end) = dollar_tag_end(b, i) {
                    let tag = &sql[i..=tag_end];
                    let end = sql[tag_end + 1..]
                        .find(tag)
                        .map_or(b.len(), |p| tag_end + 1 + p + tag.len());
                    replace(&mut out, &mut copied, i, end);
                    i = end;
                } else {
                    // `$1` and other parameters stay: skip the digits.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' if !prev_is_word => {
                let end = skip_number(b, i);
                replace(&mut out, &mut copied, i, end);
                i = end;
            }
            b'.' if !prev_is_word
                && (i == 0 || b[i - 1] != b'.')
                && b.get(i + 1).is_some_and(u8::is_ascii_digit) =>
            {
                let end = skip_number(b, i);
                replace(&mut out, &mut copied, i, end);
                i = end;
            }
            c if is_word_start(c) && !prev_is_word => {
                let word_end = skip_word(b, i);
                let word = &sql[i..word_end];
                let next = b.get(word_end).copied();
                if next == Some(b'\'') && matches!(word, "E" | "e") {
                    let end = skip_quoted(b, word_end + 1, b'\'', true);
                    replace(&mut out, &mut copied, i, end);
                    i = end;
                } else if next == Some(b'\'') && matches!(word, "N" | "n" | "B" | "b" | "X" | "x") {
                    let end = skip_quoted(b, word_end + 1, b'\'', false);
                    replace(&mut out, &mut copied, i, end);
                    i = end;
                } else if matches!(word, "U" | "u")
                    && next == Some(b'&')
                    && b.get(word_end + 1) == Some(&b'\'')
                {
                    let end = skip_quoted(b, word_end + 2, b'\'', false);
                    replace(&mut out, &mut copied, i, end);
                    i = end;
                } else if matches!(word, "U" | "u")
                    && next == Some(b'&')
                    && b.get(word_end + 1) == Some(&b'"')
                {
                    // U&"identifier" stays.
                    i = skip_quoted(b, word_end + 2, b'"', false);
                } else if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
                    replace(&mut out, &mut copied, i, word_end);
                    i = word_end;
                } else {
                    i = word_end;
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[copied.min(sql.len())..]);
    out
}

/// Letters, digits, `_`, `$` and every non-ASCII byte continue an identifier.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn skip_word(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_word(b[i]) {
        i += 1;
    }
    i
}

fn find_byte(b: &[u8], from: usize, needle: u8) -> Option<usize> {
    b[from..]
        .iter()
        .position(|&c| c == needle)
        .map(|p| from + p)
}

/// From just after an opening quote, the index after the closing one (or the end
/// of a cut-short text). A doubled quote is part of the literal; with
/// `backslash`, so is a quote after `\` (in `E'…'`).
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslash: bool) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' if backslash => i += 2,
            c if c == quote => {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return i + 1;
                }
            }
            _ => i += 1,
        }
    }
    b.len()
}

/// Block comments nest in PostgreSQL.
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// If a dollar quote opens at `i` (`$$` or `$tag$`, where the tag does not start
/// with a digit), the index of its closing `$`.
fn dollar_tag_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    (b.get(j) == Some(&b'$')).then_some(j)
}

/// A numeric constant: `42`, `4.2`, `.5`, `1e-5`, `1.5E+10`, `0x1F`, `0o17`,
/// `0b101`, `1_000`.
fn skip_number(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'0' && matches!(b.get(i + 1), Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')) {
        i += 2;
        while i < b.len() && (b[i].is_ascii_hexdigit() || b[i] == b'_') {
            i += 1;
        }
        return i;
    }
    let digits = |mut i: usize| {
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        i
    };
    i = digits(i);
    // A `.` followed by another `.` is a range operator, not a fraction.
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn masks(sql: &str, expected: &str) {
        assert_eq!(mask(sql), expected, "masking {sql:?}");
    }

    #[test]
    fn plain_strings_and_numbers() {
        masks(
            "SELECT * FROM users WHERE name = 'alice' AND age > 42",
            "SELECT * FROM users WHERE name = ? AND age > ?",
        );
        masks("select 'it''s', 'a''''b'", "select ?, ?");
        masks("SELECT ''", "SELECT ?");
    }

    #[test]
    fn numbers_in_every_form() {
        masks(
            "select 1e-5, .5, 4.25, 1.5E+10, 7e3, 0x1F, 1_000, 3.",
            "select ?, ?, ?, ?, ?, ?, ?, ?",
        );
        masks("select -12", "select -?");
        masks("select a[1:2], b[1..2]", "select a[?:?], b[?..?]");
    }

    #[test]
    fn identifiers_parameters_and_casts_stay() {
        masks(
            "SELECT t1.col2, \"Weird \"\"5\"\" col\" FROM t1 WHERE id = $1 AND x = $12",
            "SELECT t1.col2, \"Weird \"\"5\"\" col\" FROM t1 WHERE id = $1 AND x = $12",
        );
        masks(
            "select '5'::int, x::numeric(10,2)",
            "select ?::int, x::numeric(?,?)",
        );
        masks("select e.id from e", "select e.id from e");
        masks("select u&x from b", "select u&x from b");
        masks(
            "select U&\"d\\0061t\" from t",
            "select U&\"d\\0061t\" from t",
        );
    }

    #[test]
    fn escape_strings_with_backslashes() {
        masks(r"select E'it\'s \\', 1", "select ?, ?");
        masks(r"select e'a\\' , 'b\'", "select ? , ?");
    }

    #[test]
    fn prefixed_strings() {
        masks(
            "select B'1010', X'1F', N'name', U&'d\\0061t\\+000061'",
            "select ?, ?, ?, ?",
        );
        masks("select b'1' from b", "select ? from b");
    }

    #[test]
    fn booleans_are_literals_but_words_that_contain_them_are_not() {
        masks(
            "update t set on = TRUE, off = false where trueish and is_false",
            "update t set on = ?, off = ? where trueish and is_false",
        );
    }

    #[test]
    fn dollar_quotes_nest_by_tag() {
        masks(
            "DO $outer$ BEGIN EXECUTE $inner$ select 'x' $inner$; END $outer$; select $$a$b$$, $1",
            "DO ?; select ?, $1",
        );
        masks("select $fn$it's$fn$ as s", "select ? as s");
        masks("select a$b$c from t", "select a$b$c from t");
    }

    #[test]
    fn comments_keep_their_place_and_their_quotes_do_not_confuse() {
        masks(
            "select /* it's 5 o'clock */ 1 -- don't\n, 'x' /* a /* nested ' */ */ from t",
            "select /* it's 5 o'clock */ ? -- don't\n, ? /* a /* nested ' */ */ from t",
        );
    }

    #[test]
    fn text_cut_short_in_a_literal_masks_to_the_end() {
        masks(
            "select * from t where name = 'ali",
            "select * from t where name = ?",
        );
        masks("select E'abc\\", "select ?");
        masks("select $q$ body never ends", "select ?");
        masks("select 1.5e", "select ?e");
        masks("select \"unterminated", "select \"unterminated");
        masks(
            "select 1 /* never closed 'x'",
            "select ? /* never closed 'x'",
        );
        masks("select x'", "select ?");
        masks("select U&'", "select ?");
    }

    #[test]
    fn multibyte_text_passes_through() {
        masks("select 'żółw', größe from tür", "select ?, größe from tür");
    }

    #[test]
    fn fingerprints_group_by_shape_not_values_or_spacing() {
        let (a, fa) = prepare("select * from t where id = 1", QueryText::Masked);
        let (_, fb) = prepare("SELECT * FROM t WHERE id = 2", QueryText::Masked);
        let (_, fc) = prepare("select  *\n from t where id = 99", QueryText::Masked);
        let (_, fd) = prepare("select * from u where id = 1", QueryText::Masked);
        assert_eq!(a, "select * from t where id = ?");
        assert_ne!(fa, fb, "case matters in identifiers and keywords alike");
        assert_eq!(fa, fc);
        assert_ne!(fa, fd);
        assert_ne!(fa, 0);
        let (raw, fr) = prepare("select * from t where id = 1", QueryText::Raw);
        assert_eq!((raw.as_str(), fr), ("select * from t where id = 1", fa));
        let (none, fnone) = prepare("select * from t where id = 1", QueryText::None);
        assert_eq!((none.as_str(), fnone), ("", fa));
        assert_eq!(prepare("", QueryText::Masked), (String::new(), 0));
    }

    #[test]
    fn modes_parse_with_a_clear_error() {
        assert_eq!("MASKED".parse(), Ok(QueryText::Masked));
        assert_eq!("raw".parse(), Ok(QueryText::Raw));
        assert_eq!("none".parse(), Ok(QueryText::None));
        let err = "hidden".parse::<QueryText>().unwrap_err();
        assert!(err.contains("masked, raw or none"), "{err}");
    }
}
