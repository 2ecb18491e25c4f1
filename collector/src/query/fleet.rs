//! Fleet-wide answers over the live view: the summary per label value, and
//! how TopSessions filters and ranks sessions.

use std::collections::BTreeMap;

use pgfleet_proto::model::{Session, SessionState};
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::v1;

use crate::aggregator::{Health, ServerView};

/// The servers added up per value of `group_by` (one row for all when empty),
/// in the order of the values.
pub fn summarise<'a>(
    servers: impl Iterator<Item = &'a ServerView>,
    group_by: &str,
    now: Micros,
) -> Vec<v1::FleetSummaryRow> {
    struct Acc {
        row: v1::FleetSummaryRow,
        by_state: BTreeMap<&'static str, u32>,
        longest_us: i64,
    }
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    for s in servers {
        let value = if group_by.is_empty() {
            String::new()
        } else {
            s.labels.get(group_by).cloned().unwrap_or_default()
        };
        let acc = groups.entry(value.clone()).or_insert_with(|| Acc {
            row: v1::FleetSummaryRow {
                value,
                ..Default::default()
            },
            by_state: BTreeMap::new(),
            longest_us: -1,
        });
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
        for (state, n) in &r.by_state {
            *acc.by_state.entry(state).or_default() += n;
        }
        if let Some(age) = r.longest_xact_us
            && age > acc.longest_us
        {
            acc.longest_us = age;
            row.longest_transaction = Some(time::duration(age));
            row.longest_transaction_server = s.server_id.clone();
        }
        let share = s.pools.slots_utilisation();
        if share > row.max_slot_utilisation {
            row.max_slot_utilisation = share;
            row.most_saturated_server = s.server_id.clone();
        }
    }
    groups
        .into_values()
        .map(|mut acc| {
            acc.row.sessions_by_state = acc
                .by_state
                .into_iter()
                .map(|(name, count)| v1::SlotCount {
                    name: name.to_owned(),
                    count,
                })
                .collect();
            acc.row
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
