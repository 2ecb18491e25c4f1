//! Fleet-wide answers over the live view: the summary per label value, and
//! how TopSessions filters and ranks sessions.

use std::collections::{BTreeMap, HashMap};

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use crate::aggregator::{ByState, Census, HealthKind, state_at};

/// The servers carrying `wanted` added up per value of `group_by` (one row
/// for all when empty), in the order of the values.
///
/// It reads the census, a line per server in one array: each distinct set
/// of labels is matched and grouped once, then every line is added to its
/// group, and the strings of a row are copied once, at the end.
pub fn summarise(
    census: &Census,
    wanted: &HashMap<String, String>,
    group_by: &str,
    now: Micros,
) -> Vec<v1::FleetSummaryRow> {
    #[derive(Default)]
    struct Acc {
        row: v1::FleetSummaryRow,
        by_state: ByState,
        /// The oldest transaction and the line of its server.
        longest: Option<(i64, usize)>,
        /// The fullest slots and the line of their server.
        most_saturated: Option<(f64, usize)>,
    }
    let sets = &census.label_sets;
    // What is wanted, as ids: a key or value no server carries matches none.
    let Some(wanted) = wanted
        .iter()
        .map(|(key, value)| Some((sets.id(key)?, sets.id(value)?)))
        .collect::<Option<Vec<_>>>()
    else {
        return Vec::new();
    };
    let key = sets.id(group_by).filter(|_| !group_by.is_empty());
    // Each label set's group (None: not wanted), found once per value; the
    // groups by value (a server without the label counts under "").
    let mut values: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_value: Vec<Option<usize>> = vec![None; sets.strings()];
    let mut unlabelled: Option<usize> = None;
    let group_of: Vec<Option<usize>> = (0..sets.len())
        .map(|set| {
            let pairs = sets.pairs(set);
            if !wanted.iter().all(|w| pairs.contains(w)) {
                return None;
            }
            let value = key.and_then(|k| pairs.iter().find(|(key, _)| *key == k));
            let slot = match value {
                Some(&(_, v)) => &mut by_value[v as usize],
                None => &mut unlabelled,
            };
            Some(*slot.get_or_insert_with(|| {
                let text = value.map_or("", |&(_, v)| sets.string(v));
                let next = values.len();
                *values.entry(text).or_insert(next)
            }))
        })
        .collect();
    let mut accs: Vec<Acc> = (0..values.len()).map(|_| Acc::default()).collect();
    for (i, line) in census.lines.iter().enumerate() {
        let Some(&Some(group)) = group_of.get(line.labels as usize) else {
            continue;
        };
        let acc = &mut accs[group];
        let row = &mut acc.row;
        row.servers += 1;
        match line.health(now) {
            HealthKind::Up => row.servers_up += 1,
            HealthKind::Down => row.servers_down += 1,
            HealthKind::Stale => row.servers_stale += 1,
        }
        row.sessions += line.sessions;
        row.waiting_sessions += line.waiting;
        row.blocked_sessions += line.blocked;
        for (sum, n) in acc.by_state.iter_mut().zip(line.by_state) {
            *sum += n;
        }
        if let Some(age) = line.longest_xact_us
            && acc.longest.is_none_or(|(longest, _)| age > longest)
        {
            acc.longest = Some((age, i));
        }
        let share = line.slot_utilisation;
        if share > acc.most_saturated.map_or(0.0, |(max, _)| max) {
            acc.most_saturated = Some((share, i));
        }
    }
    let name = |i: usize| census.names[i].to_string();
    values
        .into_iter()
        .map(|(value, group)| {
            let acc = std::mem::take(&mut accs[group]);
            let mut by_state: Vec<v1::SlotCount> = acc
                .by_state
                .iter()
                .enumerate()
                .filter(|&(_, &count)| count > 0)
                .map(|(i, &count)| v1::SlotCount {
                    name: state_at(i).to_owned(),
                    count,
                })
                .collect();
            by_state.sort_unstable_by(|a, b| a.name.cmp(&b.name));
            v1::FleetSummaryRow {
                value: value.to_owned(),
                sessions_by_state: by_state,
                longest_transaction: acc.longest.map(|(age, _)| time::duration(age)),
                longest_transaction_server: acc.longest.map(|(_, i)| name(i)).unwrap_or_default(),
                max_slot_utilisation: acc.most_saturated.map_or(0.0, |(share, _)| share),
                most_saturated_server: acc.most_saturated.map(|(_, i)| name(i)).unwrap_or_default(),
                ..acc.row
            }
        })
        // A group whose label sets no server carries now.
        .filter(|row| row.servers > 0)
        .collect()
}

/// The most sessions TopSessions returns.
pub const MAX_TOP_SESSIONS: usize = 1000;

/// An exact-match filter; empty matches everything.
pub(super) fn matches(wanted: &str, value: &str) -> bool {
    wanted.is_empty() || wanted == value
}

/// How TopSessions ranks sessions.
#[derive(Debug, Clone, Copy)]
pub(super) enum TopOrder {
    XactAge,
    QueryAge,
    IdleInTransaction,
}

impl TopOrder {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(TopOrder::XactAge);
        }
        pgfleet_common::settings::parse_choice(
            "an order",
            text,
            &[
                ("xact_age", TopOrder::XactAge),
                ("query_age", TopOrder::QueryAge),
                ("idle_in_transaction", TopOrder::IdleInTransaction),
            ],
        )
    }

    /// The age the session is ranked by at `at`; None when it does not take
    /// part (no transaction, not active, not idle in one).
    pub(super) fn age(self, s: &Session, at: Micros) -> Option<i64> {
        let since = match self {
            TopOrder::XactAge => s.xact_start_us?,
            TopOrder::QueryAge if s.state == SessionState::Active => s.query_start_us?,
            TopOrder::IdleInTransaction
                if matches!(
                    s.state,
                    SessionState::IdleInTransaction | SessionState::IdleInTransactionAborted
                ) =>
            {
                s.state_change_us?
            }
            _ => return None,
        };
        Some((at - since).max(0))
    }
}
