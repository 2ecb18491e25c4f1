//! The reader's schedule, texts sent once, and what it says.

use std::time::Duration;

use pgfleet_proto::v1;

use super::delta::{Counters, Key};
use super::reader::State;
use super::texts::cut;
use super::*;
use crate::sampler::query_text::{self, QueryText};

const S: i64 = 1_000_000;

fn reader(every: Option<Duration>) -> Statements {
    Statements::new("db", every, QueryText::Masked, Duration::from_secs(2))
}

fn entry(query_id: i64) -> (Key, Counters) {
    (
        Key {
            query_id,
            dbid: 1,
            userid: 10,
        },
        Counters {
            calls: 1,
            ..Default::default()
        },
    )
}

#[test]
fn reads_keep_to_their_grid_and_off_never_reads() {
    let mut r = reader(Some(Duration::from_secs(60)));
    assert!(r.due(0), "the first sample reads");
    r.next_at_us = Some(60 * S);
    assert!(!r.due(59 * S));
    assert!(r.due(60 * S - 100_000), "a tick 100 ms early is on time");
    assert!(r.due(61 * S));
    // Every second, equal to the sampling interval: every tick reads.
    let mut r = reader(Some(Duration::from_secs(1)));
    r.next_at_us = Some(S);
    assert!(r.due(S - 5_000));
    assert!(!reader(None).due(0));
    assert_eq!(reader(None).status(), "off");

    let mut r = reader(Some(Duration::from_secs(60)));
    r.state = State::Missing {
        retry_at_us: 600 * S,
    };
    assert!(!r.due(599 * S), "a missing extension is looked for rarely");
    assert!(r.due(600 * S));
}

#[test]
fn texts_are_read_once_and_again_if_their_sample_was_lost() {
    let mut r = reader(Some(Duration::from_secs(60)));
    let top = [entry(7), entry(8), entry(7)];
    assert_eq!(r.texts.wanted(&top), [7, 8]);
    let texts = r.texts.take(
        [
            (7, "SELECT pg_sleep($1)"),
            (7, "SELECT pg_sleep($1) -- another user's"),
            (8, "SELECT * FROM t WHERE a = $1 AND b = 'x'"),
        ],
        1023,
    );
    assert_eq!(texts[&7], "SELECT pg_sleep(?)");
    assert_eq!(texts[&8], "SELECT * FROM t WHERE a = ? AND b = ?");
    let (_, activity) = query_text::prepare("SELECT pg_sleep(0.5);", QueryText::Masked);
    assert_eq!(
        r.texts.fingerprint(7),
        activity,
        "the fingerprint of pg_stat_activity's"
    );
    assert!(r.texts.wanted(&top).is_empty(), "each text is sent once");
    assert_eq!(r.texts.wanted(&[entry(9)]), [9]);

    // The sample that carried 8's text was not delivered: it goes again.
    let lost = v1::StatementsSample {
        statements: vec![
            v1::StatementDelta {
                query_id: 8,
                query: texts[&8].clone(),
                ..Default::default()
            },
            v1::StatementDelta {
                query_id: 7,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    r.not_delivered(&lost);
    assert_eq!(r.texts.wanted(&top), [8]);
}

#[test]
fn texts_are_cut_like_activity_s_and_bounded_per_sample() {
    assert_eq!(cut("SELECT 'żółw'", 10), "SELECT 'ż");
    assert_eq!(cut("SELECT 'żółw'", 9), "SELECT '");
    assert_eq!(cut("abc", 10), "abc");
    let mut r = reader(Some(Duration::from_secs(60)));
    let long = format!("SELECT '{}'", "x".repeat(4000));
    let texts = r.texts.take([(1, long.as_str())], 1023);
    assert_eq!(
        texts[&1], "SELECT ?",
        "cut inside the literal, masked to its end"
    );

    let big = "y".repeat(600 << 10);
    let texts = r.texts.take(
        [(2, big.as_str()), (3, big.as_str()), (4, "SELECT 1")],
        1 << 20,
    );
    assert_eq!(
        texts.len(),
        2,
        "past {MAX_TEXT_BYTES} bytes a text waits for a later read"
    );
    assert_eq!(r.texts.wanted(&[entry(2), entry(3), entry(4)]), [3]);
}

#[test]
fn a_missing_extension_is_explained_with_its_fix() {
    let mut r = reader(Some(Duration::from_secs(60)));
    r.missing(
        Missing::NotInstalled {
            database: "postgres".into(),
        },
        0,
    );
    let status = r.status();
    assert!(
        status.contains("shared_preload_libraries = 'pg_stat_statements'")
            && status.contains("CREATE EXTENSION pg_stat_statements")
            && status.contains("\"postgres\""),
        "{status}"
    );
    assert!(matches!(r.state, State::Missing { retry_at_us } if retry_at_us == 600 * S));
    assert!(
        Missing::NotLoaded
            .explain()
            .contains("shared_preload_libraries")
    );
}

#[test]
fn a_restarted_server_is_looked_at_again_at_once() {
    let mut r = reader(Some(Duration::from_secs(60)));
    r.server_started(1);
    r.missing(Missing::NotLoaded, 0);
    r.server_started(1);
    assert!(!r.due(S), "the same server: in ten minutes");
    r.server_started(2);
    assert!(r.due(S), "restarted (with the library, maybe): now");
}
