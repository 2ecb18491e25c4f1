//! serde helpers for the query API's well-known types, used by the generated code so
//! that `--output json` prints timestamps as RFC 3339 and durations as seconds, as the
//! proto3 JSON mapping does.

use serde::Serializer;

use crate::time::{duration_micros, micros_to_system_time, timestamp_micros};

/// A `Timestamp` as an RFC 3339 string in UTC, or null.
pub fn timestamp<S: Serializer>(
    ts: &Option<prost_types::Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match ts.as_ref().map(timestamp_micros) {
        // RFC 3339 writes years 1970 (here) to 9999; anything else as its
        // microseconds, rather than a panic.
        Some(at) if !crate::time::writable(at) => {
            s.collect_str(&format_args!("{at} µs since 1970"))
        }
        Some(at) => s.collect_str(&humantime::format_rfc3339_micros(micros_to_system_time(at))),
        None => s.serialize_none(),
    }
}

/// A `Duration` as seconds with a trailing "s" ("1.500000s"), or null.
pub fn duration<S: Serializer>(d: &Option<prost_types::Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => {
            let us = duration_micros(d);
            let sign = if us < 0 { "-" } else { "" };
            let us = us.unsigned_abs();
            s.collect_str(&format_args!(
                "{sign}{}.{:06}s",
                us / 1_000_000,
                us % 1_000_000
            ))
        }
        None => s.serialize_none(),
    }
}

/// A `PoolKind` as its short name ("agent", "application"), not its number.
pub fn pool_kind<S: Serializer>(kind: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match crate::v1::PoolKind::try_from(*kind) {
        Ok(crate::v1::PoolKind::Agent) => "agent",
        Ok(crate::v1::PoolKind::Application) => "application",
        _ => "unknown",
    })
}

#[cfg(test)]
mod tests {
    use crate::time;
    use crate::v1;

    #[test]
    fn query_messages_print_with_proto_field_names_and_readable_times() {
        let session = v1::Session {
            pid: 42,
            state: "idle in transaction".into(),
            query_start: Some(time::timestamp(1_732_460_000_250_000)),
            duration: Some(time::duration(2_500_000)),
            ..Default::default()
        };
        let json = serde_json::to_value(&session).unwrap();
        assert_eq!(json["pid"], 42);
        assert_eq!(json["state"], "idle in transaction");
        assert_eq!(json["query_start"], "2024-11-24T14:53:20.250000Z");
        assert_eq!(json["duration"], "2.500000s");
        assert!(json["xact_start"].is_null());
        assert!(json.get("blocked_by").is_some());
    }
}
