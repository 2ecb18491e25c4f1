//! Property-based tests of what pgfleet reads from outside: no input makes it
//! panic, and wrong input gets an error. `.ci/run` runs proptest's default
//! number of cases (256 each); `bench/properties.sh` runs many more
//! (`PROPTEST_CASES`).
//!
//! - arbitrary bytes, and arbitrary well-formed messages, into ingest's
//!   decoding (the wire message, the dictionary, each snapshot);
//! - arbitrary text into the query-text masker, which never lets a literal
//!   of a valid statement through;
//! - arbitrary matchers and ranges into `QueryMetrics`;
//! - arbitrary TOML into each binary's config file.
//!
//! The aggregator's `apply` has its own, in the collector's unit tests.

use std::path::Path;

use pgfleet_agent::sampler::query_text;
use pgfleet_collector::series::{Matcher, Plan};
use pgfleet_common::settings;
use pgfleet_proto::compact::Resolver;
use pgfleet_proto::v1;
use proptest::prelude::*;
use prost::Message;

/// Any well-formed session sample, with references that may or may not be
/// in the dictionary.
fn session() -> impl Strategy<Value = v1::SessionSample> {
    (
        any::<i32>(),
        any::<i64>(),
        any::<i64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<i32>(), 0..4),
        any::<i32>(),
    )
        .prop_map(
            |(pid, backend_start_us, xact, query_ref, user_ref, db_ref, blocked_by, unchanged)| {
                v1::SessionSample {
                    pid,
                    backend_start_us,
                    xact_start_us: xact,
                    query_ref,
                    user_ref,
                    database_ref: db_ref,
                    blocked_by,
                    unchanged: unchanged as u32,
                    ..Default::default()
                }
            },
        )
}

fn snapshot() -> impl Strategy<Value = v1::Snapshot> {
    (
        "[a-z0-9-]{0,12}",
        any::<i64>(),
        any::<bool>(),
        proptest::collection::vec(session(), 0..8),
        proptest::collection::vec((any::<i32>(), any::<i64>()), 0..4),
        0u8..3,
    )
        .prop_map(|(server_id, at, up, sessions, removed, kind)| {
            let activity = match kind {
                0 => None,
                1 => Some(v1::snapshot::Activity::Keyframe(v1::ActivityKeyframe {
                    sessions,
                })),
                _ => Some(v1::snapshot::Activity::Delta(v1::ActivityDelta {
                    base_sampled_at_us: at.wrapping_sub(1),
                    upserted: sessions,
                    removed: removed
                        .into_iter()
                        .map(|(pid, backend_start_us)| v1::SessionKey {
                            pid,
                            backend_start_us,
                        })
                        .collect(),
                })),
            };
            v1::Snapshot {
                server_id,
                sampled_at_us: at,
                status: Some(v1::TargetStatus {
                    up,
                    reason: String::new(),
                }),
                activity,
                ..Default::default()
            }
        })
}

/// What ingest does with a batch: the dictionary, then every snapshot.
fn ingest(batch: v1::Batch) {
    let mut dictionary = Resolver::default();
    if dictionary.add(batch.dictionary_additions).is_err() {
        return;
    }
    for s in batch.snapshots {
        let _ = dictionary.snapshot(s);
    }
}

/// A few TOML-looking documents from the keys a file may have.
fn toml_text(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "\"[^\"\\\\\n]{0,20}\"",
        any::<i64>().prop_map(|n| n.to_string()),
        Just("true".to_owned()),
        Just("[\"a\", 1]".to_owned()),
        Just("{ x = 1 }".to_owned()),
        "[^\n]{0,20}",
    ];
    proptest::collection::vec((proptest::sample::select(keys), value), 0..6).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    })
}

const AGENT_KEYS: &[&str] = &[
    "collector",
    "target",
    "interval",
    "labels",
    "server_id",
    "databases",
    "query_text",
    "spool_max_bytes",
    "token_file",
    "compression",
    "statements_interval",
    "[[targets]]",
    "bogus",
];
const COLLECTOR_KEYS: &[&str] = &[
    "listen",
    "http_listen",
    "query_listen",
    "data_dir",
    "tokens_file",
    "read_tokens_file",
    "retention_frames",
    "store",
    "duplicate_server_id",
    "load",
    "bogus",
];
const CLI_KEYS: &[&str] = &["collector", "output", "tls_ca", "token_file", "bogus"];

proptest! {
    #[test]
    fn arbitrary_bytes_into_ingest_decoding_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(v1::AgentMessage { msg: Some(v1::agent_message::Msg::Batch(batch)) }) =
            v1::AgentMessage::decode(bytes.as_slice())
        {
            ingest(batch);
        }
    }

    #[test]
    fn well_formed_batches_decode_or_are_refused_without_panic(
        snapshots in proptest::collection::vec(snapshot(), 0..4),
        entries in proptest::collection::vec((any::<u32>(), ".{0,12}"), 0..8),
    ) {
        let batch = v1::Batch {
            seq: 1,
            dictionary_additions: entries
                .into_iter()
                .map(|(id, value)| v1::DictionaryEntry { id, value })
                .collect(),
            snapshots,
        };
        // Through the wire and back, as the collector gets it.
        let message = v1::AgentMessage { msg: Some(v1::agent_message::Msg::Batch(batch)) };
        let decoded = v1::AgentMessage::decode(message.encode_to_vec().as_slice()).unwrap();
        if let Some(v1::agent_message::Msg::Batch(batch)) = decoded.msg {
            ingest(batch);
        }
    }

    #[test]
    fn the_masker_takes_any_text(text in ".{0,200}") {
        let masked = query_text::mask(&text);
        let _ = query_text::fingerprint_of_masked(&masked);
        for mode in [query_text::QueryText::Masked, query_text::QueryText::Raw] {
            let _ = query_text::prepare(&text, mode);
        }
    }

    #[test]
    fn no_literal_of_a_valid_statement_gets_through(
        // Letters no keyword of the statements has, so a match is a leak.
        word in "zq[a-zA-Z0-9 _%-]{2,20}",
        number in 1000u64..,
        decimal in 10u32..,
        fraction in 100u32..,
    ) {
        let statements = [
            format!("SELECT * FROM t WHERE name = '{word}' AND id = {number}"),
            format!("SELECT * FROM t WHERE name = E'{word}\\'' OR x = {decimal}.{fraction}"),
            format!("INSERT INTO t (a, b) VALUES ('{}', {number})", word.replace('\'', "''")),
            format!("SELECT $tag${word}$tag$, {number}"),
            format!("UPDATE t SET a = -{number}, b = '{word}' WHERE c IN ({decimal}, {fraction})"),
        ];
        for sql in statements {
            let masked = query_text::mask(&sql);
            prop_assert!(!masked.contains(&word), "{} kept {:?}: {}", sql, word, masked);
            prop_assert!(!masked.contains(&number.to_string()), "{} kept {}: {}", sql, number, masked);
        }
    }

    #[test]
    fn arbitrary_matchers_parse_or_say_why(text in ".{0,40}") {
        if let Err(e) = Matcher::parse(&text) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn arbitrary_ranges_and_steps_are_planned_or_refused(
        metric in prop_oneof![Just("sessions".to_owned()), ".{0,12}"],
        start in proptest::option::of((any::<i64>(), any::<i32>())),
        end in proptest::option::of((any::<i64>(), any::<i32>())),
        step in proptest::option::of((any::<i64>(), any::<i32>())),
        matchers in proptest::collection::vec(".{0,20}", 0..3),
        group_by in proptest::collection::vec("[a-z_]{0,8}", 0..3),
    ) {
        let ts = |(seconds, nanos): (i64, i32)| prost_types::Timestamp { seconds, nanos };
        let request = v1::QueryMetricsRequest {
            metric,
            matchers,
            start: start.map(ts),
            end: end.map(ts),
            step: step.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
            group_by,
        };
        if let Err(e) = Plan::new(&request, pgfleet_proto::time::now_micros()) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn arbitrary_toml_into_each_binary_s_config(
        agent in toml_text(AGENT_KEYS),
        collector in toml_text(COLLECTOR_KEYS),
        cli in toml_text(CLI_KEYS),
        noise in ".{0,80}",
    ) {
        let path = Path::new("config.toml");
        for text in [&agent, &noise] {
            let _ = settings::parse_toml::<pgfleet_agent::config::AgentFile>(path, text);
        }
        for text in [&collector, &noise] {
            let _ = settings::parse_toml::<pgfleet_collector::config::CollectorFile>(path, text);
        }
        for text in [&cli, &noise] {
            let _ = settings::parse_toml::<pgfleet_cli::CliFile>(path, text);
        }
        // And whole: each binary resolves its settings from the file.
        let dir = std::env::temp_dir().join(format!("pgfleet-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.toml");
        std::fs::write(&file, &agent).unwrap();
        let _ = pgfleet_agent::AgentConfig::resolve(
            pgfleet_agent::AgentArgs {
                config: Some(file.clone()),
                ..Default::default()
            },
            |_| None,
        );
        std::fs::write(&file, &collector).unwrap();
        let _ = pgfleet_collector::config::CollectorConfig::resolve(
            pgfleet_collector::config::CollectorArgs {
                config: Some(file.clone()),
                ..Default::default()
            },
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
