//! The aggregator's rules, on its commands alone (no sockets; a SQLite store
//! in a temporary directory where the history is the point).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pgfleet_proto::model::{Session, Snapshot, TargetStatus};
use pgfleet_proto::time::Micros;

use super::*;
use crate::query::summarise;
use Health::{Down, Stale, Up};
use pgfleet_proto::model::SessionState;

fn target(id: &str) -> TargetInfo {
    TargetInfo {
        server_id: id.to_owned(),
        labels: BTreeMap::new(),
    }
}

fn snapshot(id: &str, at: Micros, pids: &[i32]) -> Snapshot {
    Snapshot {
        status: TargetStatus::Up,
        sessions: pids
            .iter()
            .map(|&pid| {
                Arc::new(Session {
                    pid,
                    state: SessionState::Active,
                    ..Default::default()
                })
            })
            .collect(),
        ..Snapshot::down(id.to_owned(), at, String::new())
    }
}

/// A snapshot whose sessions differ by pid and time: databases, states,
/// waits, blocks, background processes and transactions that begin at the
/// same time or not, so that rollups have something to count.
fn varied(id: &str, at: Micros, pids: &[i32]) -> Snapshot {
    let mut s = snapshot(id, at, pids);
    for session in &mut s.sessions {
        let pid = session.pid;
        let n = pid.wrapping_add((at % 7) as i32).rem_euclid(5);
        *Arc::make_mut(session) = Session {
            pid,
            database: ["orders", "billing"][pid.rem_euclid(2) as usize].into(),
            state: [
                SessionState::Active,
                SessionState::Idle,
                SessionState::IdleInTransaction,
                SessionState::Unknown,
                SessionState::Active,
            ][n as usize],
            xact_start_us: (n != 1).then_some(at - i64::from(pid.rem_euclid(3)) * 1_000),
            wait_event_type: ["", "Lock", "IO"][pid.rem_euclid(3) as usize].into(),
            blocked_by: if n == 4 { vec![1] } else { Vec::new() },
            backend_type: if pid % 11 == 0 {
                "autovacuum worker"
            } else {
                "client backend"
            }
            .into(),
            ..Default::default()
        };
    }
    s
}

fn aggregator() -> Aggregator {
    Aggregator::new().0
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn replays_are_acknowledged_but_not_applied() {
    let mut a = aggregator();
    assert_eq!(
        a.register("a1".into(), 1, vec![target("db")], SECOND, None)
            .unwrap(),
        0
    );
    a.apply("a1", 1, 1, vec![snapshot("db", 10, &[1])]).unwrap();
    a.apply("a1", 1, 2, vec![snapshot("db", 20, &[1, 2])])
        .unwrap();
    // Batch 1 again, with other content: acknowledged, ignored.
    a.apply("a1", 1, 1, vec![snapshot("db", 30, &[9])]).unwrap();
    assert_eq!(a.servers["db"].sessions.len(), 2);
    assert_eq!(a.servers["db"].rollup.sessions, 2);
    let stream = a.servers["db"].stream;
    assert_eq!(
        (stream.first_seq, stream.last_seq, stream.applied_batches),
        (1, 2, 2)
    );
    assert_eq!((stream.replayed_batches, stream.missing_batches), (1, 0));
    // Batches 3 to 5 never came (the agent dropped them).
    a.apply("a1", 1, 6, vec![snapshot("db", 40, &[1])]).unwrap();
    assert_eq!(a.servers["db"].stream.missing_batches, 3);
    // A new stream of the same agent resumes after 6.
    assert_eq!(
        a.register("a1".into(), 2, vec![target("db")], SECOND, None)
            .unwrap(),
        6
    );
}

#[test]
fn a_newer_stream_of_the_same_agent_replaces_the_old_one() {
    let mut a = aggregator();
    a.register("a1".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    a.register("a1".into(), 2, vec![target("db")], SECOND, None)
        .unwrap();
    let old = a
        .apply("a1", 1, 1, vec![snapshot("db", 10, &[1])])
        .unwrap_err();
    assert_eq!(old.code(), tonic::Code::FailedPrecondition);
    a.apply("a1", 2, 1, vec![snapshot("db", 10, &[1])]).unwrap();
    // The old stream's end does not mark the agent disconnected.
    a.disconnect("a1", 1);
    assert!(a.servers["db"].agent_connected);
    a.disconnect("a1", 2);
    assert!(!a.servers["db"].agent_connected);
}

#[test]
fn a_second_live_agent_cannot_claim_a_server() {
    let mut a = aggregator();
    a.register("a1".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    let refused = a
        .register("a2".into(), 2, vec![target("db")], SECOND, None)
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists);
    assert!(refused.message().contains("a1"), "{}", refused.message());
    // Once the first agent is gone, another may take the server over.
    a.disconnect("a1", 1);
    assert!(
        a.register("a2".into(), 2, vec![target("db")], SECOND, None)
            .is_ok()
    );
}

#[test]
fn with_takeover_the_newer_agent_streams_the_server() {
    let mut a = Aggregator::with_policy(DuplicateServerId::Takeover).0;
    a.register("primary".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    a.apply("primary", 1, 1, vec![snapshot("db", 10, &[1])])
        .unwrap();
    a.register("standby".into(), 2, vec![target("db")], SECOND, None)
        .unwrap();
    a.apply("standby", 2, 1, vec![snapshot("db", 20, &[7, 8])])
        .unwrap();
    // The old agent's snapshots are acknowledged and set aside.
    a.apply("primary", 1, 2, vec![snapshot("db", 30, &[1])])
        .unwrap();
    assert_eq!(a.servers["db"].agent_id, "standby");
    assert_eq!(a.servers["db"].sessions.len(), 2);
    // Its stream's end does not mark the server's agent disconnected.
    a.disconnect("primary", 1);
    assert!(a.servers["db"].agent_connected);
}

#[test]
fn snapshots_of_servers_the_agent_did_not_name_are_refused() {
    let mut a = aggregator();
    a.register("a1".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    let err = a
        .apply("a1", 1, 1, vec![snapshot("other", 10, &[])])
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn health_is_up_down_or_stale_with_a_reason() {
    let mut a = aggregator();
    a.register("a1".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    let now = now_micros();
    assert!(
        matches!(a.servers["db"].health(now), Stale(r) if r.contains("no snapshot has arrived"))
    );
    a.apply("a1", 1, 1, vec![snapshot("db", 10, &[1])]).unwrap();
    assert_eq!(a.servers["db"].health(now_micros()), Up);
    let later = now_micros() + 4_000_000;
    assert!(matches!(a.servers["db"].health(later), Stale(r) if r.contains("no snapshot for")));
    let mut down = snapshot("db", 20, &[]);
    down.status = TargetStatus::Down("connection refused".into());
    a.apply("a1", 1, 2, vec![down]).unwrap();
    assert_eq!(
        a.servers["db"].health(now_micros()),
        Down("connection refused".into())
    );
    a.disconnect("a1", 1);
    assert!(matches!(a.servers["db"].health(later), Stale(r) if r.contains("disconnected")));
}

#[test]
fn database_increments_are_summed_even_from_older_snapshots() {
    let mut a = aggregator();
    a.register("a1".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    let with = |at, commits| {
        let mut s = snapshot("db", at, &[]);
        s.databases = vec![v1::DatabaseCounters {
            database: "orders".into(),
            xact_commit: commits,
            ..Default::default()
        }];
        s
    };
    a.apply("a1", 1, 1, vec![with(20, 5)]).unwrap();
    a.apply("a1", 1, 2, vec![with(10, 3)]).unwrap();
    a.apply("a1", 1, 3, vec![with(30, 2)]).unwrap();
    assert_eq!(a.servers["db"].databases["orders"].totals.xact_commit, 10);
    // A database an up snapshot no longer lists is dropped.
    a.apply("a1", 1, 4, vec![snapshot("db", 40, &[])]).unwrap();
    assert!(a.servers["db"].databases.is_empty());
}

#[test]
fn deltas_apply_to_their_base_and_otherwise_ask_for_a_keyframe() {
    use pgfleet_proto::model::Delta;
    let mut a = aggregator();
    a.register("a1".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    a.apply("a1", 1, 1, vec![snapshot("db", 10, &[1, 2, 3])])
        .unwrap();
    let mut d = snapshot("db", 20, &[4]);
    Arc::make_mut(&mut d.sessions[0]).state = SessionState::Idle;
    d.delta = Some(Delta {
        unchanged: Vec::new(),
        base_sampled_at_us: 10,
        removed: vec![(2, 0)],
    });
    assert!(a.apply("a1", 1, 2, vec![d]).unwrap().is_empty());
    let mut pids: Vec<_> = a.servers["db"].sessions.iter().map(|s| s.pid).collect();
    pids.sort();
    assert_eq!(pids, [1, 3, 4]);

    // A delta against a snapshot this collector never applied.
    let mut lost = snapshot("db", 40, &[9]);
    lost.delta = Some(Delta {
        unchanged: Vec::new(),
        base_sampled_at_us: 30,
        removed: vec![],
    });
    assert_eq!(a.apply("a1", 1, 3, vec![lost]).unwrap(), ["db"]);
    assert_eq!(
        a.servers["db"].sampled_at_us, 20,
        "nothing of it was applied"
    );
    assert_eq!(a.servers["db"].sessions.len(), 3);
}

/// One step of an agent's stream, as a property test draws it.
#[derive(Debug, Clone)]
enum Step {
    /// A keyframe of `server` at `at` with these pids.
    Keyframe {
        server: usize,
        at: Micros,
        pids: Vec<i32>,
    },
    /// A delta: upserted pids with field masks, removed pids, against a
    /// base that is the server's last time, or `other_base`.
    Delta {
        server: usize,
        at: Micros,
        upserted: Vec<(i32, u32)>,
        removed: Vec<i32>,
        right_base: bool,
        other_base: Micros,
    },
    /// The server down.
    Down { server: usize, at: Micros },
    /// A batch number already applied, again.
    Replay { seq: u64 },
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let pids = || proptest::collection::vec(0i32..40, 0..12);
    prop_oneof![
        (0usize..2, 0i64..1_000_000, pids()).prop_map(|(server, at, pids)| Step::Keyframe {
            server,
            at,
            pids
        }),
        (
            0usize..2,
            0i64..1_000_000,
            proptest::collection::vec((0i32..40, any::<u32>()), 0..8),
            pids(),
            any::<bool>(),
            any::<i64>(),
        )
            .prop_map(|(server, at, upserted, removed, right_base, other_base)| {
                Step::Delta {
                    server,
                    at,
                    upserted,
                    removed,
                    right_base,
                    other_base,
                }
            }),
        (0usize..2, 0i64..1_000_000).prop_map(|(server, at)| Step::Down { server, at }),
        (0u64..20).prop_map(|seq| Step::Replay { seq }),
    ]
}

proptest::proptest! {
    /// Any sequence of well-formed snapshots (keyframes, deltas against the
    /// right or a wrong base with any field masks, downs, replays) is applied
    /// or asked again as a keyframe, never a panic; and each view keeps its
    /// sessions whole, in key order, each once, counted by its rollup.
    #[test]
    fn any_stream_of_snapshots_applies_without_panic_and_keeps_views_whole(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let servers = ["db-a", "db-b"];
        let mut a = aggregator();
        a.register(
            "a1".into(),
            1,
            servers.iter().map(|s| target(s)).collect(),
            SECOND,
            None,
        )
        .unwrap();
        let mut seq = 0;
        for step in steps {
            let (batch_seq, snapshot) = match step {
                Step::Keyframe { server, at, pids } => {
                    seq += 1;
                    (seq, varied(servers[server], at, &pids))
                }
                Step::Delta { server, at, upserted, removed, right_base, other_base } => {
                    seq += 1;
                    let base = if right_base {
                        a.servers[servers[server]].sampled_at_us
                    } else {
                        other_base
                    };
                    let (pids, masks): (Vec<i32>, Vec<u32>) = upserted.into_iter().unzip();
                    let mut s = varied(servers[server], at, &pids);
                    s.delta = Some(pgfleet_proto::model::Delta {
                        base_sampled_at_us: base,
                        removed: removed.into_iter().map(|pid| (pid, 0)).collect(),
                        unchanged: masks,
                    });
                    (seq, s)
                }
                Step::Down { server, at } => {
                    seq += 1;
                    (seq, Snapshot::down(servers[server].to_owned(), at, "gone".into()))
                }
                Step::Replay { seq: old } => (old.min(seq), snapshot(servers[0], 0, &[1])),
            };
            let answer = a.apply("a1", 1, batch_seq, vec![snapshot]);
            proptest::prop_assert!(answer.is_ok(), "{answer:?}");
            for id in servers {
                let view = &a.servers[id];
                let keys: Vec<_> = view.sessions.iter().map(|s| s.key()).collect();
                proptest::prop_assert!(
                    keys.windows(2).all(|w| w[0] < w[1]),
                    "{id}: sessions out of order or twice: {keys:?}"
                );
                // Kept up to date from deltas, it counts as counting them all.
                proptest::prop_assert_eq!(
                    &*view.rollup,
                    &crate::rollup::Rollup::of(&view.sessions, view.sampled_at_us)
                );
            }
            // Published, the census sums what the views hold.
            let view = published(&mut a);
            let now = now_micros();
            proptest::prop_assert_eq!(
                summarise(&view.census, &HashMap::new(), "", now),
                summed_from_views(&view, &HashMap::new(), "", now)
            );
        }
    }
}

fn published(a: &mut Aggregator) -> Arc<FleetView> {
    a.publish_view();
    a.publish.borrow().clone()
}

/// FleetSummary's rows as the views themselves add up: what the census
/// must give.
fn summed_from_views(
    view: &FleetView,
    wanted: &HashMap<String, String>,
    group_by: &str,
    now: Micros,
) -> Vec<v1::FleetSummaryRow> {
    type Group = (
        v1::FleetSummaryRow,
        BTreeMap<&'static str, u32>,
        Option<(i64, String)>,
        Option<(f64, String)>,
    );
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for s in view.servers.values().filter(|s| s.has_labels(wanted)) {
        let value = s.labels.get(group_by).cloned().unwrap_or_default();
        let (row, by_state, longest, fullest) = groups.entry(value).or_default();
        row.servers += 1;
        match s.health(now) {
            Up => row.servers_up += 1,
            Down(_) => row.servers_down += 1,
            Stale(_) => row.servers_stale += 1,
        }
        row.sessions += s.rollup.sessions;
        row.waiting_sessions += s.rollup.waiting;
        row.blocked_sessions += s.rollup.blocked;
        for (&state, &n) in &s.rollup.by_state {
            *by_state.entry(state).or_default() += n;
        }
        if let Some(age) = s.rollup.longest_xact_us
            && longest.as_ref().is_none_or(|(max, _)| age > *max)
        {
            *longest = Some((age, s.server_id.clone()));
        }
        let share = s.pools.slots_utilisation();
        if share > fullest.as_ref().map_or(0.0, |(max, _)| *max) {
            *fullest = Some((share, s.server_id.clone()));
        }
    }
    groups
        .into_iter()
        .map(
            |(value, (row, by_state, longest, fullest))| v1::FleetSummaryRow {
                value,
                sessions_by_state: by_state
                    .into_iter()
                    .map(|(name, count)| v1::SlotCount {
                        name: name.to_owned(),
                        count,
                    })
                    .collect(),
                longest_transaction: longest
                    .as_ref()
                    .map(|(age, _)| pgfleet_proto::time::duration(*age)),
                longest_transaction_server: longest.map(|(_, id)| id).unwrap_or_default(),
                max_slot_utilisation: fullest.as_ref().map_or(0.0, |(share, _)| *share),
                most_saturated_server: fullest.map(|(_, id)| id).unwrap_or_default(),
                ..row
            },
        )
        .collect()
}

#[test]
fn the_census_follows_every_change_of_the_views() {
    let mut a = aggregator();
    let labelled = |id: &str, labels: &[(&str, &str)]| TargetInfo {
        server_id: id.to_owned(),
        labels: labels
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    };
    a.register(
        "a1".into(),
        1,
        vec![labelled("db1", &[("dc", "eu1"), ("role", "primary")])],
        SECOND,
        None,
    )
    .unwrap();
    a.register(
        "a2".into(),
        2,
        vec![
            labelled("db2", &[("dc", "eu1")]),
            labelled("db3", &[("dc", "us1")]),
        ],
        SECOND,
        None,
    )
    .unwrap();
    // An empty value groups with no value at all.
    a.register(
        "a3".into(),
        3,
        vec![labelled("db4", &[("role", "")])],
        SECOND,
        None,
    )
    .unwrap();
    let check = |a: &mut Aggregator, now: Micros, what: &str| {
        let view = published(a);
        let eu1 = HashMap::from([("dc".to_owned(), "eu1".to_owned())]);
        let nowhere = HashMap::from([("dc".to_owned(), "nowhere".to_owned())]);
        for wanted in [&HashMap::new(), &eu1, &nowhere] {
            for group_by in ["", "dc", "role", "zone"] {
                let rows = summarise(&view.census, wanted, group_by, now);
                assert_eq!(
                    rows,
                    summed_from_views(&view, wanted, group_by, now),
                    "{what}: group_by {group_by:?}, labels {wanted:?}"
                );
                let counted: u32 = rows.iter().map(|r| r.servers).sum();
                assert_eq!(
                    counted as usize,
                    view.servers
                        .values()
                        .filter(|s| s.has_labels(wanted))
                        .count()
                );
            }
        }
        view
    };
    check(&mut a, now_micros(), "registered, nothing sampled");

    a.apply("a1", 1, 1, vec![varied("db1", 10, &[1, 2, 3, 4, 5])])
        .unwrap();
    let mut full = varied("db2", 10, &[1, 2, 3, 4, 5, 6, 7]);
    full.slots = Some(v1::ConnectionSlots {
        max_connections: 20,
        reserved: 3,
        used: 9,
        ..Default::default()
    });
    a.apply("a2", 2, 1, vec![full, varied("db3", 10, &[7, 8])])
        .unwrap();
    a.apply("a3", 3, 1, vec![varied("db4", 10, &[3])]).unwrap();
    let view = check(&mut a, now_micros(), "sampled");
    let rows = summarise(&view.census, &HashMap::new(), "", now_micros());
    assert_eq!(rows[0].servers_up, 4);
    assert_eq!(rows[0].most_saturated_server, "db2");
    assert!(
        rows[0].sessions > 0 && rows[0].blocked_sessions > 0,
        "{rows:?}"
    );

    // One server changes, one goes down, one agent leaves: their lines
    // must be read again.
    let hashed = a.census.sets_hashed();
    a.apply("a1", 1, 2, vec![varied("db1", 20, &[2, 9, 10, 11, 12, 13])])
        .unwrap();
    let mut down = snapshot("db3", 20, &[]);
    down.status = TargetStatus::Down("connection refused".into());
    a.apply("a2", 2, 2, vec![down]).unwrap();
    a.disconnect("a3", 3);
    check(&mut a, now_micros(), "changed");
    // Their labels did not change: each line found its set by address.
    assert_eq!(a.census.sets_hashed(), hashed);
    // Later, every server is stale.
    let read = a.census.lines_read();
    check(&mut a, now_micros() + 10_000_000, "stale");
    // Nothing changed since the last publish: no line was read again.
    assert_eq!(a.census.lines_read(), read);

    // A server that sorts first moves every line after it; an agent
    // relabelled carries its new labels.
    a.register(
        "a0".into(),
        4,
        vec![labelled("db0", &[("dc", "us1")])],
        SECOND,
        None,
    )
    .unwrap();
    a.apply("a0", 4, 1, vec![varied("db0", 30, &[1, 4])])
        .unwrap();
    a.register(
        "a1".into(),
        5,
        vec![labelled("db1", &[("dc", "eu2"), ("role", "replica")])],
        SECOND,
        None,
    )
    .unwrap();
    let view = check(&mut a, now_micros(), "added and relabelled");
    assert_eq!(view.census.names.len(), 5);
    assert_eq!(&*view.census.names[0], "db0");

    // An agent relabelled again and again: the label sets no server carries
    // are forgotten once they outnumber the servers, and the census is read
    // anew.
    for n in 0..80 {
        let dc = format!("dc-{n}");
        a.register(
            "a1".into(),
            6 + n,
            vec![labelled("db1", &[("dc", &dc)])],
            SECOND,
            None,
        )
        .unwrap();
        let view = check(&mut a, now_micros(), &format!("relabelled {n} times"));
        assert!(
            view.census.label_sets.len() <= 2 * view.servers.len() + 64 + 1,
            "{} label sets for {} servers",
            view.census.label_sets.len(),
            view.servers.len()
        );
    }
}

/// A census is written in the room of the one published before the last
/// once no view holds that one, and copied anew while a reader still does;
/// either way it is the census of the servers as they are.
#[test]
fn a_census_takes_the_room_of_one_no_view_holds() {
    let mut counting = census::Counting::default();
    let mut servers: BTreeMap<Arc<str>, Arc<ServerView>> = (0..50)
        .map(|i| {
            let id = format!("db{i:02}");
            (
                Arc::from(id.as_str()),
                Arc::new(ServerView::new(&id, SECOND)),
            )
        })
        .collect();
    let first = counting.refresh(&servers);
    let second = counting.refresh(&servers);
    assert!(!Arc::ptr_eq(&first, &second), "the first is still held");
    // The view that held the first is let go; a reader holds the second.
    let first_room = Arc::as_ptr(&first);
    drop(first);
    // Had the first been freed, this would take its room.
    let filler = Arc::new(Census::default());
    // A changed view is a new allocation (the published view holds the old
    // one), as the aggregator's are.
    let old = servers["db07"].clone();
    let mut changed = (*old).clone();
    changed.last_seen_us = Some(now_micros());
    servers.insert("db07".into(), Arc::new(changed));
    let third = counting.refresh(&servers);
    assert_eq!(
        Arc::as_ptr(&third),
        first_room,
        "written where the first was"
    );
    drop(filler);
    assert_eq!(third.lines.len(), 50);
    let now = now_micros();
    assert_eq!(third.lines[7].health(now), HealthKind::Up);
    assert_eq!(
        second.lines[7].health(now),
        HealthKind::Stale,
        "a reader's census stays as it was"
    );
    // Every census is still held: the next is a copy of its own.
    let fourth = counting.refresh(&servers);
    assert!(!Arc::ptr_eq(&fourth, &third) && !Arc::ptr_eq(&fourth, &second));
    assert_eq!(fourth.lines[7].health(now), HealthKind::Up);
    assert_eq!(&*fourth.names[49], "db49");
}

/// A server's counter with one minute closed from `t0` (an active session
/// at each of its 20 samples), and what it closed.
fn counted_minute(t0: Micros) -> (Counter, Vec<Closed>) {
    let sessions = Arc::new(vec![Arc::new(Session {
        pid: 7,
        state: SessionState::Active,
        backend_type: "client backend".into(),
        user: "app".into(),
        ..Default::default()
    })]);
    let mut counter = Counter::default();
    let mut closed = Vec::new();
    for s in 0..=20 {
        let at = if s == 20 {
            t0 + crate::load::COARSE_US
        } else {
            t0 + s * 1_000_000
        };
        counter.sample(at, 1_000_000, &sessions, &mut closed, &mut |_, _| {});
    }
    counter.finish(&mut closed);
    (counter, closed)
}

/// A SQLite store in a directory of its own, named `name`.
fn sqlite_store(name: &str) -> (std::path::PathBuf, Store) {
    let dir = crate::store::scratch(&format!("agg-{name}"));
    let (store, _) = Store::open_sqlite(
        &dir,
        crate::store::Retention::default(),
        crate::store::DictTraining::default(),
    )
    .unwrap();
    (dir, store)
}

#[tokio::test]
async fn a_closed_minute_waiting_for_the_store_reads_as_open_then_is_stored() {
    let (dir, store) = sqlite_store("later");
    let mut agg = aggregator();
    agg.store = Some(store.clone());
    let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % crate::load::COARSE_US;
    let (counter, closed) = counted_minute(t0);
    assert_eq!(closed.len(), 1, "{closed:?}");
    close_later(&mut agg.later, "db", closed);
    agg.load.insert("db".into(), counter);
    // Another server's waiting load is not this one's.
    let (_, other) = counted_minute(t0);
    close_later(&mut agg.later, "other", other);

    let open_load = |agg: &mut Aggregator, hours_only| {
        let (reply, mut answer) = oneshot::channel();
        agg.handle(
            Command::OpenLoad {
                server_ids: vec!["db".into()],
                hours_only,
                reply,
            },
            &mut Vec::new(),
        );
        answer.try_recv().unwrap()
    };
    // Not yet queued for the store: readers get it with what is open.
    let open = open_load(&mut agg, false);
    let starts: Vec<Micros> = open[0]
        .1
        .iter()
        .filter_map(|c| Some(c.minute()?.coarse.start))
        .collect();
    assert_eq!(starts, [t0, t0 + crate::load::COARSE_US]);
    // The hours: the counter's first, holding both minutes.
    let hours = open_load(&mut agg, true);
    let Closed::Minute(_, first) = &hours[0].1[0] else {
        panic!("{hours:?}")
    };
    assert_eq!(first.minutes.len(), 2, "{first:?}");
    assert_eq!(hours[0].1.len(), 2, "the waiting minute's hour after it");

    // The store's queue has room: they go, and read back from the store.
    agg.store_later().await;
    assert!(agg.later.is_empty());
    assert_eq!(open_load(&mut agg, false)[0].1.len(), 1, "only the open");
    store.flush().await;
    let stored = store
        .fold_load(
            Some(vec!["db".into()]),
            t0,
            t0 + crate::load::COARSE_US,
            crate::load::Wanted::All,
            None,
            None,
            Vec::new(),
            |all, id, m| all.push((id.to_owned(), m)),
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].1.coarse.samples, 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn views_are_published_less_often_the_larger_the_fleet() {
    assert_eq!(publish_every(0), PUBLISH_EVERY);
    assert_eq!(publish_every(100), PUBLISH_EVERY);
    assert_eq!(publish_every(2_500), Duration::from_millis(50));
    assert_eq!(publish_every(10_000), PUBLISH_AT_MOST);
    assert_eq!(publish_every(usize::MAX), PUBLISH_AT_MOST);
}

/// An aggregator with a SQLite store, to which agent `a1` streamed server
/// `db` from `t0` over the end of its first minute: that minute ended and
/// waits to be built. The store's directory is named after `name`.
fn with_an_ended_minute(name: &str) -> (std::path::PathBuf, Aggregator, Micros) {
    let (dir, store) = sqlite_store(name);
    let mut a = aggregator();
    a.store = Some(store);
    a.register("a1".into(), 1, vec![target("db")], SECOND, None)
        .unwrap();
    let t0 = 1_800_000_000_000_000 - 1_800_000_000_000_000 % crate::load::COARSE_US;
    for (seq, at) in [(1, t0), (2, t0 + crate::load::COARSE_US)] {
        a.apply("a1", 1, seq, vec![snapshot("db", at, &[1])])
            .unwrap();
    }
    assert_eq!(a.ending.len(), 1, "the first minute ended, not built");
    (dir, a, t0)
}

#[tokio::test]
async fn closed_load_waits_apart_and_goes_at_once_when_its_agent_leaves() {
    let (dir, mut a, t0) = with_an_ended_minute("leaves");
    let is_load = |op: &StoreOp| matches!(op, StoreOp::Load { .. });
    // The minute ended; it is built between batches.
    assert_eq!(a.ending, [Arc::<str>::from("db")]);
    assert!(a.later.is_empty() && !a.writes.iter().any(is_load));
    a.finish_minutes(Duration::ZERO);
    assert!(a.ending.is_empty());
    assert!(
        a.later.iter().any(|(_, op)| is_load(op)),
        "the closed minute waits apart"
    );
    assert!(!a.writes.iter().any(is_load));
    // The next minute ends, and is not built before its agent leaves.
    a.apply(
        "a1",
        1,
        3,
        vec![snapshot("db", t0 + 2 * crate::load::COARSE_US, &[1])],
    )
    .unwrap();
    assert_eq!(a.ending.len(), 1);
    // Its agent leaves: another collector may stream the server next.
    a.disconnect("a1", 1);
    assert!(a.later.is_empty());
    let loads: Vec<usize> = (0..a.writes.len())
        .filter(|&i| is_load(&a.writes[i]))
        .collect();
    let gone = a
        .writes
        .iter()
        .position(|op| matches!(op, StoreOp::Disconnected { .. }));
    assert_eq!(loads.len(), 2, "both minutes");
    assert!(
        gone.is_some_and(|g| loads.iter().all(|&l| l < g)),
        "queued at once, in order"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_stopping_collector_builds_an_ended_minute_once_before_the_open_one() {
    let (dir, mut a, t0) = with_an_ended_minute("stopping");
    let (reply, _done) = oneshot::channel();
    a.handle(Command::StoreMinutes { reply }, &mut Vec::new());
    // The round after it builds nothing more.
    a.finish_minutes(Duration::ZERO);
    let loads: Vec<(Micros, usize)> = a
        .later
        .iter()
        .filter_map(|(_, op)| match op {
            StoreOp::Load { minute, hour, .. } => Some((minute.start(), hour.minutes.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        loads,
        [(t0, 1), (t0 + crate::load::COARSE_US, 2)],
        "each minute once, the hour's latest totals last"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_agent_resumed_from_another_collector_keeps_the_minute_that_ended_here() {
    let (dir, mut a, t0) = with_an_ended_minute("resumed");
    // The agent comes back having streamed to another collector, before this
    // one saw its stream end: its counter is replaced by the stored one.
    let resume = crate::store::Resume {
        last_seq: 10,
        servers: vec![crate::store::StoredServer {
            server_id: "db".into(),
            agent_id: "a1".into(),
            labels: Default::default(),
            interval: SECOND,
            activity: None,
            minute: None,
            load: Vec::new(),
        }],
    };
    a.register("a1".into(), 2, vec![target("db")], SECOND, Some(resume))
        .unwrap();
    let loads: Vec<Micros> = a
        .later
        .iter()
        .map(|(_, op)| op)
        .chain(&a.writes)
        .filter_map(|op| match op {
            StoreOp::Load { minute, .. } => Some(minute.start()),
            _ => None,
        })
        .collect();
    assert_eq!(loads, [t0], "the minute that ended here is not lost");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn minutes_that_ended_are_built_at_an_even_pace_within_finish_within() {
    let w = FINISH_WITHIN;
    assert_eq!(minutes_due(0, w, w), 0, "none waits");
    // A round a hundredth of the window long builds a hundredth of them,
    // right after the minute's end and halfway through, with half left.
    assert_eq!(minutes_due(10_000, w / 100, Duration::ZERO), 100);
    assert_eq!(minutes_due(5_000, w / 100, w / 2), 100);
    // Rounds that come often build one each, at least.
    assert_eq!(minutes_due(3, Duration::from_millis(1), Duration::ZERO), 1);
    // Past the window, or in a round as long as what is left of it: all.
    assert_eq!(minutes_due(7, Duration::from_millis(1), w), 7);
    assert_eq!(minutes_due(7, w / 2, w / 2), 7);
    assert_eq!(minutes_due(7, w, Duration::ZERO), 7);
    // 10,000 servers' minutes, a round every 180 ms (as at 10,000 servers):
    // the same few each round, the last built near the window's end.
    let round = publish_every(10_000);
    let (mut waiting, mut age, mut most) = (10_000, Duration::ZERO, 0);
    while waiting > 0 {
        age += round;
        let due = minutes_due(waiting, round, age - round);
        most = most.max(due);
        waiting -= due;
    }
    let even = (10_000 * round.as_millis()).div_ceil(w.as_millis()) as usize;
    assert!(
        most <= even + 1,
        "{most} in one round, against {even} at an even pace"
    );
    assert!(
        age > w * 9 / 10 && age <= w,
        "the last built {age:?} after the end"
    );
}

#[tokio::test]
async fn the_frames_ingest_wrote_go_to_the_store_with_the_snapshots_applied() {
    use pgfleet_proto::model::Delta;
    let (dir, store) = sqlite_store("written");
    let mut a = aggregator();
    a.store = Some(store);
    a.register(
        "a1".into(),
        1,
        vec![target("db1"), target("db2")],
        SECOND,
        None,
    )
    .unwrap();
    let stored = |a: &mut Aggregator, seq: u64| -> Vec<(String, Micros, bool, Vec<u8>)> {
        let at = a
            .writes
            .iter()
            .position(|w| matches!(w, StoreOp::Applied { seq: s, .. } if *s == seq))
            .expect("the batch's frames were written");
        match a.writes.remove(at) {
            StoreOp::Applied { frames, .. } => frames
                .into_iter()
                .map(|f| (f.server_id, f.at, f.keyframe, f.bytes))
                .collect(),
            _ => unreachable!(),
        }
    };
    let batch = vec![snapshot("db1", 10, &[1]), snapshot("db2", 10, &[2])];
    a.apply_with("a1", 1, 1, batch, vec![b"k1".to_vec(), b"k2".to_vec()])
        .unwrap();
    assert_eq!(
        stored(&mut a, 1),
        [
            ("db1".to_owned(), 10, true, b"k1".to_vec()),
            ("db2".to_owned(), 10, true, b"k2".to_vec())
        ]
    );
    // An older snapshot and a delta without its base are not applied, and
    // their frames not stored: each snapshot keeps its own frame.
    let mut lost = snapshot("db2", 20, &[2]);
    lost.delta = Some(Delta {
        base_sampled_at_us: 15,
        ..Default::default()
    });
    let batch = vec![snapshot("db1", 5, &[1]), lost, snapshot("db1", 20, &[1, 3])];
    let written = ["old", "lost", "new"].map(|b| b.as_bytes().to_vec());
    assert_eq!(
        a.apply_with("a1", 1, 2, batch, written.to_vec()).unwrap(),
        ["db2"]
    );
    assert_eq!(
        stored(&mut a, 2),
        [("db1".to_owned(), 20, true, b"new".to_vec())]
    );
    // Not written by ingest: the aggregator writes them, before the merge.
    let mut delta = snapshot("db1", 30, &[3]);
    delta.delta = Some(Delta {
        base_sampled_at_us: 20,
        removed: vec![(1, 0)],
        unchanged: vec![0],
    });
    let expected = crate::store::frame_bytes(&delta);
    a.apply("a1", 1, 3, vec![delta]).unwrap();
    assert_eq!(stored(&mut a, 3), [("db1".to_owned(), 30, false, expected)]);
    std::fs::remove_dir_all(dir).ok();
}
