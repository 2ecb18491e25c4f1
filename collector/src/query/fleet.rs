//! Fleet-wide answers over the live view: the summary per label value, and
//! how TopSessions filters and ranks sessions.

use std::collections::BTreeMap;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use crate::aggregator::{Health, ServerView};

/// The servers added up per value of `group_by` (one row for all when empty),
/// in the order of the values.
///
/// It reads every server of the fleet at each call: the groups are found by
/// the label's value as the view holds it, and the strings of a row are
/// copied once, at the end, rather than per server.
pub fn summarise<'a>(
    servers: impl Iterator<Item = &'a ServerView>,
    group_by: &str,
    now: Micros,
) -> Vec<v1::FleetSummaryRow> {
    #[derive(Default)]
    struct Acc<'a> {
        row: v1::FleetSummaryRow,
        /// Sessions by state, in the order first met.
        by_state: Vec<(&'static str, u32)>,
        longest: Option<(i64, &'a str)>,
        most_saturated: Option<(f64, &'a str)>,
    }
    let mut groups: BTreeMap<&'a str, Acc<'a>> = BTreeMap::new();
    for s in servers {
        let value = if group_by.is_empty() {
            ""
        } else {
            s.labels.get(group_by).map_or("", String::as_str)
        };
        let acc = groups.entry(value).or_default();
        let row = &mut acc.row;
        row.servers += 1;
        match s.health(now) {
            Health::Up => row.servers_up += 1,
            Health::Down(_) => row.servers_down += 1,
            Health::Stale(_) => row.servers_stale += 1,
        }
        let r = &s.rollup;
        row.sessions += r.sessions;
        row.waiting_sessions += r.waiting;
        row.blocked_sessions += r.blocked;
        for (&state, &n) in &r.by_state {
            match acc.by_state.iter_mut().find(|(name, _)| *name == state) {
                Some((_, count)) => *count += n,
                None => acc.by_state.push((state, n)),
            }
        }
        if let Some(age) = r.longest_xact_us
            && acc.longest.is_none_or(|(longest, _)| age > longest)
        {
            acc.longest = Some((age, &s.server_id));
        }
        let share = s.pools.slots_utilisation();
        if share > acc.most_saturated.map_or(0.0, |(max, _)| max) {
            acc.most_saturated = Some((share, &s.server_id));
        }
    }
    groups
        .into_iter()
        .map(|(value, mut acc)| {
            acc.by_state.sort_unstable();
            let row = acc.row;
            v1::FleetSummaryRow {
                value: value.to_owned(),
                sessions_by_state: acc
                    .by_state
                    .into_iter()
                    .map(|(name, count)| v1::SlotCount {
                        name: name.to_owned(),
                        count,
                    })
                    .collect(),
                longest_transaction: acc.longest.map(|(age, _)| time::duration(age)),
                longest_transaction_server: acc
                    .longest
                    .map(|(_, server)| server.to_owned())
                    .unwrap_or_default(),
                max_slot_utilisation: acc.most_saturated.map_or(0.0, |(share, _)| share),
                most_saturated_server: acc
                    .most_saturated
                    .map(|(_, server)| server.to_owned())
                    .unwrap_or_default(),
                ..row
            }
        })
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
