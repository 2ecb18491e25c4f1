//! Time on the wire: microseconds since the Unix epoch on the ingest stream,
//! `google.protobuf.Timestamp` and `Duration` on the query API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub type Micros = i64;

/// The current wall-clock time in microseconds since the epoch.
pub fn now_micros() -> Micros {
    system_time_to_micros(SystemTime::now())
}

/// A `SystemTime` in microseconds since the epoch (negative before 1970).
pub fn system_time_to_micros(t: SystemTime) -> Micros {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Microseconds since the epoch as a `SystemTime`.
pub fn micros_to_system_time(us: Micros) -> SystemTime {
    let magnitude = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// The first instant past what RFC 3339 writes (year 10000), in
/// microseconds since the epoch.
pub const MAX_RFC3339_US: Micros = 253_402_300_800_000_000;

/// Whether RFC 3339 can write `at` (1970 to 9999).
pub fn writable(at: Micros) -> bool {
    (0..MAX_RFC3339_US).contains(&at)
}

/// Microseconds since the epoch in RFC 3339, to the second
/// (`2026-11-24T03:12:00Z`), as errors and the CLI print instants; an
/// instant before 1970 or past 9999 (which RFC 3339 cannot write) as its
/// microseconds.
pub fn rfc3339(at: Micros) -> String {
    if !writable(at) {
        return format!("{at} µs since 1970");
    }
    humantime::format_rfc3339_seconds(micros_to_system_time(at)).to_string()
}

/// Microseconds since the epoch as a protobuf `Timestamp`.
pub fn timestamp(us: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: (us.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// A protobuf `Timestamp` in microseconds since the epoch.
pub fn timestamp_micros(ts: &prost_types::Timestamp) -> Micros {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1_000)
}

/// A span of microseconds as a protobuf `Duration`.
pub fn duration(us: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: us / 1_000_000,
        nanos: ((us % 1_000_000) * 1_000) as i32,
    }
}

/// A protobuf `Duration` in microseconds.
pub fn duration_micros(d: &prost_types::Duration) -> i64 {
    d.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(d.nanos) / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_rfc3339_cannot_write_are_written_as_microseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1), "-1 µs since 1970");
        assert_eq!(rfc3339(1 << 62), format!("{} µs since 1970", 1i64 << 62));
        assert_eq!(rfc3339(MAX_RFC3339_US - 1), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn timestamps_round_trip_on_both_sides_of_the_epoch() {
        for us in [
            0,
            1,
            999_999,
            1_000_000,
            1_732_460_000_123_456,
            -1,
            -1_500_000,
        ] {
            let ts = timestamp(us);
            assert!((0..1_000_000_000).contains(&ts.nanos), "{ts:?}");
            assert_eq!(timestamp_micros(&ts), us);
            assert_eq!(system_time_to_micros(micros_to_system_time(us)), us);
        }
    }

    #[test]
    fn durations_round_trip() {
        for us in [0, 1, 2_500_000, 86_400_000_000] {
            assert_eq!(duration_micros(&duration(us)), us);
        }
    }
}
