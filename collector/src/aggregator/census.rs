//! The census: what a fleet-wide read needs of each server (health, sessions
//! by state, waits, the oldest transaction, how full its slots are), a line
//! per server in one array that the aggregator keeps beside the view.
//!
//! FleetSummary reads every server. Read from the views, that was a walk over
//! 10,000 `ServerView`s, their rollups, pools and labels, each apart on the
//! heap: about five cache misses a server, 4–5 ms at 10,000 servers and three
//! times that under load. The census is read in order from one array, and a
//! server's labels are read once per distinct set of labels, not per server.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use pgfleet_proto::model::{SessionState, TargetStatus};
use pgfleet_proto::time::Micros;

use super::view::{ServerView, silent};
use crate::rollup::state_name;

/// Client sessions counted by state: NULL's ("unknown") first, then each of
/// [`SessionState::NAMED`] in turn (see [`state_at`]).
pub type ByState = [u32; SessionState::NAMED.len() + 1];

/// The state at `i` of a line's `by_state`.
fn state(i: usize) -> SessionState {
    i.checked_sub(1)
        .map_or(SessionState::Unknown, |i| SessionState::NAMED[i])
}

/// The name of the state at `i` of a line's `by_state`.
pub fn state_at(i: usize) -> &'static str {
    state_name(state(i))
}

/// A server's health at an instant, without the reasons (see
/// [`ServerView::health`] for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthKind {
    Up,
    Down,
    Stale,
}

/// One server, as a fleet-wide read needs it.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    /// The view this line was read from (its address, compared only): a view
    /// that changed is a new allocation (see [`Counting::refresh`]).
    view: usize,
    /// The server's labels, by their id in [`Census::label_sets`].
    pub labels: u32,
    last_seen_us: Option<Micros>,
    interval: Duration,
    down: bool,
    /// Client sessions.
    pub sessions: u32,
    /// Active sessions waiting on anything.
    pub waiting: u32,
    /// Sessions waiting for a lock another session holds.
    pub blocked: u32,
    /// Client sessions by state.
    pub by_state: ByState,
    /// The oldest open transaction, in microseconds.
    pub longest_xact_us: Option<i64>,
    /// Client backends over the slots they may take.
    pub slot_utilisation: f64,
}

impl Line {
    fn of(view: &ServerView, labels: u32) -> Line {
        let r = &view.rollup;
        let mut by_state = ByState::default();
        for (&name, &n) in &r.by_state {
            if let Some(i) = (0..by_state.len()).position(|i| state_at(i) == name) {
                by_state[i] = n;
            }
        }
        Line {
            view: std::ptr::from_ref(view) as usize,
            labels,
            last_seen_us: view.last_seen_us,
            interval: view.interval,
            down: matches!(view.status, TargetStatus::Down(_)),
            sessions: r.sessions,
            waiting: r.waiting,
            blocked: r.blocked,
            by_state,
            longest_xact_us: r.longest_xact_us,
            slot_utilisation: view.pools.slots_utilisation(),
        }
    }

    /// The server's health at `now`, as [`ServerView::health`] has it.
    pub fn health(&self, now: Micros) -> HealthKind {
        if silent(self.last_seen_us, self.interval, now) {
            HealthKind::Stale
        } else if self.down {
            HealthKind::Down
        } else {
            HealthKind::Up
        }
    }
}

/// Every server's line, in the order of the view's servers, with their
/// server_ids and the distinct sets of labels they carry.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// A line per server, in server_id order.
    pub lines: Vec<Line>,
    /// The server_id of each line.
    pub names: Arc<Vec<Arc<str>>>,
    /// Each distinct set of labels, by id.
    pub label_sets: LabelSets,
}

/// The distinct sets of labels servers carry, each as (key, value) pairs of
/// string ids in one array: a fleet-wide read matches and groups thousands
/// of them (a cluster label makes a set of every few servers) without
/// reading a string per set.
#[derive(Debug, Clone, Default)]
pub struct LabelSets {
    /// Every set's pairs, one set after another.
    pairs: Vec<(u32, u32)>,
    /// Where each set's pairs end in `pairs`.
    ends: Vec<u32>,
    /// Every key and value, by id (shared, so that a copy made to add one
    /// copies no string).
    strings: Arc<Vec<Arc<str>>>,
}

impl LabelSets {
    /// How many sets there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The (key, value) pairs of set `set`.
    pub fn pairs(&self, set: usize) -> &[(u32, u32)] {
        let start = set.checked_sub(1).map_or(0, |i| self.ends[i] as usize);
        &self.pairs[start..self.ends[set] as usize]
    }

    /// How many distinct keys and values there are (ids are below it).
    pub fn strings(&self) -> usize {
        self.strings.len()
    }

    /// The key or value of id `id`.
    pub fn string(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }

    /// The id of a key or value; None when no set has it.
    pub fn id(&self, text: &str) -> Option<u32> {
        let i = self.strings.iter().position(|s| **s == *text)?;
        u32::try_from(i).ok()
    }
}

/// The census the aggregator keeps, and the ids of the label sets and
/// strings in it.
#[derive(Default)]
pub(super) struct Counting {
    census: Arc<Census>,
    /// The census published before the last, kept to be written over: the
    /// last one is held by the view published with it, so the next is a
    /// copy, and a copy into this one takes no new allocation (at 10,000
    /// servers the lines are 1.1 MB).
    spare: Arc<Census>,
    sets: HashMap<Arc<BTreeMap<String, String>>, u32>,
    strings: HashMap<Arc<str>, u32>,
    /// Each line's labels as its view had them, at the line's place: the
    /// line holds their set's id. A server's views share one `Arc` of labels
    /// from one to the next, so a line read again finds its set by address,
    /// without hashing every label (SipHash, for each line read at each
    /// publish). The `Arc` is held here, so no other labels take its address
    /// meanwhile.
    labels: Vec<Arc<BTreeMap<String, String>>>,
    /// How many lines it has read from views, in all (the tests check that
    /// a view that did not change is not read again).
    #[cfg(test)]
    read: u64,
    /// How many lines it found the label set of by their labels' text.
    #[cfg(test)]
    sets_hashed: u64,
}

impl Counting {
    /// How many lines it has read from views, in all.
    #[cfg(test)]
    pub(super) fn lines_read(&self) -> u64 {
        self.read
    }

    /// How many lines it found the label set of by their labels' text, in
    /// all.
    #[cfg(test)]
    pub(super) fn sets_hashed(&self) -> u64 {
        self.sets_hashed
    }

    /// The census of `servers`, as they are now.
    ///
    /// Each line is read again only where the view at its place is another
    /// allocation than the one it was read from. That finds every change: the
    /// aggregator changes a view through `Arc::make_mut`, and the view last
    /// published (which the watch channel holds until the next) shares every
    /// view it had, so a changed view is always a copy, at an address that
    /// no view alive had. A server added moves the places after it, and
    /// their lines are read again. So it must be called only where its
    /// census is then published with `servers` (`Aggregator::publish_view`),
    /// before the view it replaces is let go.
    pub(super) fn refresh(&mut self, servers: &BTreeMap<Arc<str>, Arc<ServerView>>) -> Arc<Census> {
        // Label sets no server carries any more are forgotten when they come
        // to outnumber the servers (an agent relabelled again and again).
        if self.sets.len() > 2 * servers.len() + 64 {
            self.sets.clear();
            self.strings.clear();
            self.labels.clear();
            self.census = Arc::default();
        }
        // The census published last becomes the spare once the view that
        // holds it is let go. A reader may still hold the spare; then the
        // census is copied into a new allocation, as `make_mut` does.
        if Arc::strong_count(&self.census) > 1
            && let Some(spare) = Arc::get_mut(&mut self.spare)
        {
            spare.copy_of(&self.census);
            std::mem::swap(&mut self.census, &mut self.spare);
        }
        let census = Arc::make_mut(&mut self.census);
        census.lines.truncate(servers.len());
        self.labels.truncate(census.lines.len());
        if census.names.len() > census.lines.len() {
            Arc::make_mut(&mut census.names).truncate(census.lines.len());
        }
        let kept = census.lines.len();
        for (i, (name, view)) in servers.iter().enumerate() {
            if i < kept && census.lines[i].view == Arc::as_ptr(view) as usize {
                continue;
            }
            // Never longer than the lines (truncated with them, and pushed
            // only with them), so a held `Arc` has its line.
            let labels = match self.labels.get(i) {
                Some(held) if Arc::ptr_eq(held, &view.labels) => census.lines[i].labels,
                _ => {
                    #[cfg(test)]
                    {
                        self.sets_hashed += 1;
                    }
                    let id = match self.sets.get(&view.labels) {
                        Some(&id) => id,
                        None => {
                            let id =
                                add_set(&mut self.strings, &mut census.label_sets, &view.labels);
                            self.sets.insert(view.labels.clone(), id);
                            id
                        }
                    };
                    match self.labels.get_mut(i) {
                        Some(at) => *at = view.labels.clone(),
                        None => self.labels.push(view.labels.clone()),
                    }
                    id
                }
            };
            let line = Line::of(view, labels);
            #[cfg(test)]
            {
                self.read += 1;
            }
            if i < kept {
                census.lines[i] = line;
                if !Arc::ptr_eq(&census.names[i], name) {
                    Arc::make_mut(&mut census.names)[i] = name.clone();
                }
            } else {
                census.lines.push(line);
                Arc::make_mut(&mut census.names).push(name.clone());
            }
        }
        self.census.clone()
    }
}

impl Census {
    /// Makes this census a copy of `of`, in the room it already has.
    fn copy_of(&mut self, of: &Census) {
        self.lines.clone_from(&of.lines);
        self.names.clone_from(&of.names);
        self.label_sets.clone_from(&of.label_sets);
    }
}

/// Adds `labels` to `sets` as a new set, its strings by their ids in
/// `strings`; its id.
fn add_set(
    strings: &mut HashMap<Arc<str>, u32>,
    sets: &mut LabelSets,
    labels: &BTreeMap<String, String>,
) -> u32 {
    let mut id = |text: &str| {
        if let Some(&id) = strings.get(text) {
            return id;
        }
        let id = u32::try_from(sets.strings.len()).unwrap_or(u32::MAX);
        let text: Arc<str> = text.into();
        Arc::make_mut(&mut sets.strings).push(text.clone());
        strings.insert(text, id);
        id
    };
    let pairs: Vec<(u32, u32)> = labels.iter().map(|(k, v)| (id(k), id(v))).collect();
    sets.pairs.extend(pairs);
    sets.ends
        .push(u32::try_from(sets.pairs.len()).unwrap_or(u32::MAX));
    u32::try_from(sets.ends.len() - 1).unwrap_or(u32::MAX)
}
