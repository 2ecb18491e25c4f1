//! Each server's load per minute, by class only, gathered per hour: what
//! fleet-wide questions over long ranges read (a day of a thousand servers
//! is 24,000 small rows rather than 1.44 million minutes).

use std::collections::HashMap;

use pgfleet_proto::time::Micros;

use super::churn::{ChurnCount, ChurnKey};
use super::{Bucket, COARSE_US, Churn, Class, MinuteLoad, Tuple};

/// An hour.
pub const HOUR_US: Micros = 3_600_000_000;

/// How many numbers a minute takes in the stored row.
const CELLS: usize = 6;

/// Hours of some servers, each by its start: those a read passes over. A
/// server's are kept in order, 8 bytes an hour (a week of 10,000 servers
/// passed over is 1.68 million of them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServerHours(HashMap<String, Vec<Micros>>);

impl ServerHours {
    pub fn insert(&mut self, server_id: &str, hour: Micros) {
        let hours = match self.0.get_mut(server_id) {
            Some(hours) => hours,
            None => self.0.entry(server_id.to_owned()).or_default(),
        };
        // In order as a scan by time gives them: at the end.
        match hours.last() {
            Some(&last) if last >= hour => {
                if let Err(i) = hours.binary_search(&hour) {
                    hours.insert(i, hour);
                }
            }
            _ => hours.push(hour),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(Vec::is_empty)
    }

    /// How many hours it holds.
    pub fn len(&self) -> usize {
        self.0.values().map(Vec::len).sum()
    }

    /// Whether the hour that holds `at` is one of `server_id`'s.
    pub fn holds(&self, server_id: &str, at: Micros) -> bool {
        self.0
            .get(server_id)
            .is_some_and(|h| h.binary_search(&(at - at.rem_euclid(HOUR_US))).is_ok())
    }

    /// The parts of `[start, end)` outside `server_id`'s hours, in order.
    pub fn gaps(&self, server_id: &str, start: Micros, end: Micros) -> Vec<(Micros, Micros)> {
        let mut out = Vec::new();
        let mut from = start;
        let first = start - start.rem_euclid(HOUR_US);
        let hours = self.0.get(server_id).map_or(&[][..], Vec::as_slice);
        let skip = hours.partition_point(|h| *h < first);
        for &hour in hours[skip..].iter().take_while(|h| **h < end) {
            if hour > from {
                out.push((from, hour));
            }
            from = from.max(hour + HOUR_US);
        }
        if from < end {
            out.push((from, end));
        }
        out
    }
}

/// The server-hours a question passed over (see `Store::fold_passed`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassedOver {
    /// Those added from their totals: their minutes are not to be read.
    pub totals: ServerHours,
    /// Those whose dictionaries name nothing it asks, totals or not: with a
    /// question by query alone, their statement intervals are not read.
    pub unnamed: ServerHours,
    /// Whether a statement interval of `unnamed` overlaps the range (the
    /// answer says statistics arrived, as a read of every one would).
    pub statements: bool,
}

/// One minute of one server, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteTotals {
    pub start: Micros,
    pub samples: u32,
    pub covered_us: i64,
    /// The counts of each class ([`Class`] as an index), summed.
    pub counts: [u64; 3],
}

impl MinuteTotals {
    /// A minute's bucket, added up by class.
    pub fn of(b: &Bucket) -> MinuteTotals {
        let classes = b.tuples.iter().map(|(t, n)| (t.class, *n));
        MinuteTotals::summing(b.start, b.samples, b.covered_us, classes)
    }

    /// A minute from `start`, its tuples' counts given by class, added up.
    pub fn summing(
        start: Micros,
        samples: u32,
        covered_us: i64,
        classes: impl Iterator<Item = (Class, u32)>,
    ) -> MinuteTotals {
        let mut counts = [0u64; 3];
        for (class, n) in classes {
            counts[class as usize] += u64::from(n);
        }
        MinuteTotals {
            start,
            samples,
            covered_us,
            counts,
        }
    }

    /// The count of `class`.
    pub fn count(&self, class: Class) -> u64 {
        self.counts[class as usize]
    }

    /// The count of `class` over the samples: the average.
    pub fn average(&self, class: Class) -> f64 {
        self.count(class) as f64 / f64::from(self.samples.max(1))
    }
}

/// One server's minutes in one hour.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HourTotals {
    /// The hour's first microsecond.
    pub start: Micros,
    /// Its minutes with samples, oldest first.
    pub minutes: Vec<MinuteTotals>,
}

impl HourTotals {
    /// An empty hour that holds `at`.
    pub fn holding(at: Micros) -> HourTotals {
        HourTotals {
            start: at - at.rem_euclid(HOUR_US),
            minutes: Vec::new(),
        }
    }

    /// Whether `at` falls in this hour.
    pub fn holds(&self, at: Micros) -> bool {
        self.start <= at && at < self.start + HOUR_US
    }

    /// Sets a minute's totals (a minute counted again replaces itself).
    pub fn set(&mut self, m: MinuteTotals) {
        match self.minutes.binary_search_by_key(&m.start, |x| x.start) {
            Ok(i) => self.minutes[i] = m,
            Err(i) => self.minutes.insert(i, m),
        }
    }

    /// The hour as stored: six varints a minute.
    pub fn encode(&self) -> Vec<u8> {
        let mut cells = Vec::with_capacity(self.minutes.len() * CELLS);
        for m in &self.minutes {
            cells.extend([
                ((m.start - self.start) / COARSE_US) as u64,
                u64::from(m.samples),
                m.covered_us.max(0) as u64,
                m.counts[0],
                m.counts[1],
                m.counts[2],
            ]);
        }
        prost::Message::encode_to_vec(&StoredHour { cells })
    }

    /// A stored hour back; None when the bytes are not one.
    pub fn decode(start: Micros, bytes: &[u8]) -> Option<HourTotals> {
        let mut h = HourTotals::holding(start);
        h.decode_from(start, bytes).then_some(h)
    }

    /// Reads a stored hour into this one, keeping its allocation (a fleet's
    /// day is read an hour at a time); false when the bytes are not one.
    pub fn decode_from(&mut self, start: Micros, bytes: &[u8]) -> bool {
        self.start = start;
        self.minutes.clear();
        let mut cells = [0u64; CELLS];
        let mut filled = 0;
        let mut put = |cell: u64, minutes: &mut Vec<MinuteTotals>| {
            cells[filled] = cell;
            filled += 1;
            if filled < CELLS {
                return true;
            }
            filled = 0;
            let c = &cells;
            let (Ok(index), Ok(samples), Ok(covered_us)) = (
                i64::try_from(c[0]),
                u32::try_from(c[1]),
                i64::try_from(c[2]),
            ) else {
                return false;
            };
            minutes.push(MinuteTotals {
                start: start + index.min(59) * COARSE_US,
                samples,
                covered_us,
                counts: [c[3], c[4], c[5]],
            });
            true
        };
        let ok = match packed(bytes) {
            // The form written: the one packed field, read in place.
            Some(mut field) => {
                let mut ok = true;
                while ok && !field.is_empty() {
                    ok = prost::encoding::decode_varint(&mut field)
                        .is_ok_and(|cell| put(cell, &mut self.minutes));
                }
                ok
            }
            // Any other encoding of the message.
            None => match <StoredHour as prost::Message>::decode(bytes) {
                Ok(stored) => stored
                    .cells
                    .into_iter()
                    .all(|cell| put(cell, &mut self.minutes)),
                Err(_) => false,
            },
        };
        ok && filled == 0
    }
}

/// The varints of a message that is exactly one packed field 1 (or
/// nothing); None for anything else.
fn packed(mut bytes: &[u8]) -> Option<&[u8]> {
    match bytes.split_first() {
        None => Some(bytes),
        Some((0x0a, rest)) => {
            bytes = rest;
            let len = prost::encoding::decode_varint(&mut bytes).ok()?;
            (usize::try_from(len).ok()? == bytes.len()).then_some(bytes)
        }
        Some(_) => None,
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredHour {
    /// Per minute: its index in the hour, samples, covered µs, and the
    /// counts of the three classes.
    #[prost(uint64, repeated, tag = "1")]
    cells: Vec<u64>,
}

/// One server's tuples and churn of an hour: its minutes of load added up
/// into one bucket, for reads of whole hours (`load_tuple_hours`; a fleet's
/// day of 1,000 servers is 24,000 of them rather than 1.44 million
/// minutes). No tuple nor churn key is bounded away: an hour answers what
/// its minutes, read one by one, would.
#[derive(Debug)]
pub struct TupleHour {
    start: Micros,
    samples: u32,
    covered_us: Micros,
    counts: HashMap<Tuple, u64>,
    churn: HashMap<ChurnKey, ChurnCount>,
    /// Its lifetimes and sessions established (its rows are `churn`).
    rest: Churn,
}

impl TupleHour {
    /// An empty hour that holds `at`.
    pub fn holding(at: Micros) -> TupleHour {
        TupleHour {
            start: at - at.rem_euclid(HOUR_US),
            samples: 0,
            covered_us: 0,
            counts: HashMap::new(),
            churn: HashMap::new(),
            rest: Churn::default(),
        }
    }

    /// Adds a minute of the hour: its own bucket's samples, coverage,
    /// tuples and churn (not its 10 s buckets).
    pub fn add(&mut self, m: &MinuteLoad) {
        let b = &m.coarse;
        self.samples = self.samples.saturating_add(b.samples);
        self.covered_us += b.covered_us;
        for (t, n) in &b.tuples {
            match self.counts.get_mut(t) {
                Some(c) => *c += u64::from(*n),
                None => {
                    self.counts.insert(t.clone(), u64::from(*n));
                }
            }
        }
        super::churn::add_rows(&mut self.churn, &b.churn.rows);
        for (database, n) in &b.churn.established {
            self.rest.establish(database, *n);
        }
        self.rest.absorb_lifetimes(&b.churn);
    }

    /// The samples its minutes took.
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// The hour as a minute of load that starts at the hour, its tuples
    /// largest first (ties: the smaller tuple), its churn's keys in order.
    pub fn load(self) -> MinuteLoad {
        let mut tuples: Vec<(Tuple, u32)> = self
            .counts
            .into_iter()
            .map(|(t, n)| (t, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        tuples.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut churn = self.rest;
        churn.rows = self.churn.into_iter().collect();
        churn.rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        churn.established.sort_unstable();
        MinuteLoad {
            coarse: Bucket {
                start: self.start,
                len_us: HOUR_US,
                samples: self.samples,
                covered_us: self.covered_us,
                tuples,
                churn,
            },
            fine: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gaps_of_a_server_s_hours_are_the_rest_of_a_range() {
        let h0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % HOUR_US;
        let mut hours = ServerHours::default();
        assert!(hours.is_empty());
        // Out of order, and one twice: kept in order, once.
        for h in [1, 4, 9, 2, 4] {
            hours.insert("a", h0 + h * HOUR_US);
        }
        assert_eq!(hours.len(), 4);
        let m = COARSE_US;
        // From mid-hour to mid-hour: the skipped hours cut out whole.
        assert_eq!(
            hours.gaps("a", h0 + 30 * m, h0 + 4 * HOUR_US + 30 * m),
            [
                (h0 + 30 * m, h0 + HOUR_US),
                (h0 + 3 * HOUR_US, h0 + 4 * HOUR_US)
            ]
        );
        // A range that starts inside a skipped hour starts after it.
        assert_eq!(
            hours.gaps("a", h0 + HOUR_US + m, h0 + 4 * HOUR_US),
            [(h0 + 3 * HOUR_US, h0 + 4 * HOUR_US)]
        );
        assert_eq!(hours.gaps("a", h0 + HOUR_US, h0 + 3 * HOUR_US), []);
        assert_eq!(hours.gaps("b", h0, h0 + m), [(h0, h0 + m)]);
        assert!(hours.holds("a", h0 + 4 * HOUR_US + 59 * m));
        assert!(!hours.holds("a", h0 + 5 * HOUR_US) && !hours.holds("b", h0 + HOUR_US));
    }

    #[test]
    fn hours_keep_each_minute_once_and_come_back_as_stored() {
        let start = 1_800_000_000_000_000 - 1_800_000_000_000_000 % HOUR_US;
        let mut h = HourTotals::holding(start + 5);
        let m = |i: i64, active: u64| MinuteTotals {
            start: start + i * COARSE_US,
            samples: 60,
            covered_us: 60_000_000,
            counts: [active, 3, 0],
        };
        h.set(m(2, 100));
        h.set(m(0, 50));
        h.set(m(2, 120));
        assert_eq!(h.minutes, [m(0, 50), m(2, 120)]);
        assert_eq!(HourTotals::decode(h.start, &h.encode()), Some(h));
        assert_eq!(HourTotals::decode(start, &[0x0a, 0x01, 0x01]), None);
        assert_eq!(HourTotals::decode(start, &[0x0a, 0x05, 0x01]), None);
        assert_eq!(
            HourTotals::decode(start, &[]),
            Some(HourTotals::holding(start))
        );
        // Written another way (unpacked, as a varint field each), it reads
        // the same through prost.
        let mut unpacked = Vec::new();
        for cell in [2u64, 60, 60_000_000, 120, 3, 0] {
            prost::encoding::uint64::encode(1, &cell, &mut unpacked);
        }
        let mut only = HourTotals::holding(start);
        only.set(m(2, 120));
        assert_eq!(HourTotals::decode(start, &unpacked), Some(only));
    }
}
