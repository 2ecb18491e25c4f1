//! Who blocks whom, from each session's `blocked_by`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use pgfleet_proto::model::Session;
use pgfleet_proto::time::{self, Micros};
use pgfleet_proto::{query_session, v1};

/// The trees of one server: a root blocker each, with its waiters.
pub fn trees(server_id: &str, sessions: &[Arc<Session>], at: Micros) -> Vec<v1::BlockingTree> {
    let by_pid: BTreeMap<i32, &Session> = sessions.iter().map(|s| (s.pid, s.as_ref())).collect();
    // Waiters of each blocker, by pid.
    let mut waiters: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for s in sessions {
        for b in &s.blocked_by {
            if by_pid.contains_key(b) {
                waiters.entry(*b).or_default().push(s.pid);
            }
        }
    }
    let blocked: BTreeSet<i32> = sessions
        .iter()
        .filter(|s| s.blocked_by.iter().any(|b| by_pid.contains_key(b)))
        .map(|s| s.pid)
        .collect();
    // Roots wait on no one; what is left of the blockers after their trees
    // are built is a cycle (a deadlock about to be broken), rooted at its
    // lowest pid.
    let mut seen = BTreeSet::new();
    let mut roots: Vec<i32> = waiters
        .keys()
        .copied()
        .filter(|p| !blocked.contains(p))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        if i == roots.len() {
            match waiters.keys().find(|p| !seen.contains(*p)) {
                Some(p) => roots.push(*p),
                None => break,
            }
        }
        let root = roots[i];
        i += 1;
        if seen.contains(&root) {
            continue;
        }
        let mut stats = (0u32, 0i64);
        let node = build(root, &by_pid, &waiters, &mut seen, at, &mut stats, true);
        out.push(v1::BlockingTree {
            server_id: server_id.to_owned(),
            root: Some(node),
            waiting: stats.0,
            longest_wait: (stats.0 > 0).then(|| time::duration(stats.1)),
        });
    }
    out
}

fn build(
    pid: i32,
    by_pid: &BTreeMap<i32, &Session>,
    waiters: &BTreeMap<i32, Vec<i32>>,
    seen: &mut BTreeSet<i32>,
    at: Micros,
    stats: &mut (u32, i64),
    root: bool,
) -> v1::BlockingNode {
    seen.insert(pid);
    let session = by_pid[&pid];
    if !root {
        stats.0 += 1;
        let wait = session.query_start_us.map_or(0, |q| (at - q).max(0));
        stats.1 = stats.1.max(wait);
    }
    let children = waiters
        .get(&pid)
        .into_iter()
        .flatten()
        .filter(|w| !seen.contains(*w))
        .copied()
        .collect::<Vec<_>>();
    let mut node = v1::BlockingNode {
        session: Some(query_session(session, at)),
        waiters: Vec::new(),
    };
    for w in children {
        if !seen.contains(&w) {
            node.waiters
                .push(build(w, by_pid, waiters, seen, at, stats, false));
        }
    }
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pid: i32, blocked_by: &[i32]) -> Arc<Session> {
        Arc::new(Session {
            pid,
            query_start_us: Some(1_000_000),
            blocked_by: blocked_by.to_vec(),
            ..Default::default()
        })
    }

    fn shape(n: &v1::BlockingNode) -> String {
        let pid = n.session.as_ref().unwrap().pid;
        if n.waiters.is_empty() {
            pid.to_string()
        } else {
            let kids: Vec<_> = n.waiters.iter().map(shape).collect();
            format!("{pid}[{}]", kids.join(","))
        }
    }

    #[test]
    fn chains_fan_out_and_cycles_make_trees() {
        // 1 blocks 2 and 3; 3 blocks 4. 7 and 8 block each other. 9 waits
        // on a pid that is gone.
        let sessions = [
            s(1, &[]),
            s(2, &[1]),
            s(3, &[1]),
            s(4, &[3]),
            s(7, &[8]),
            s(8, &[7]),
            s(9, &[99]),
        ];
        let trees = trees("db", &sessions, 3_000_000);
        let shapes: Vec<_> = trees
            .iter()
            .map(|t| shape(t.root.as_ref().unwrap()))
            .collect();
        assert_eq!(shapes, ["1[2,3[4]]", "7[8]"]);
        assert_eq!(trees[0].waiting, 3);
        assert_eq!(trees[0].longest_wait, Some(time::duration(2_000_000)));
        assert_eq!(trees[1].waiting, 1);
    }
}
