//! The connection slots: client backends counted by state, application, user
//! and database, kept up to date as sessions come, change and go.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;

use pgfleet_proto::model::{ArcStr, KeyHasher, Session, SessionKey, SessionState};
use pgfleet_proto::v1;

use super::Known;

/// Counts client backends four ways (and sessions not visible); sessions are
/// added and removed as they change, so the counts are always those of the
/// sessions known.
#[derive(Debug, Default)]
pub(super) struct SlotCounter {
    /// Sessions of any kind that the agent's role may not see.
    pub(super) not_visible: u32,
    used: u32,
    by_state: BTreeMap<&'static str, u32>,
    by_application: ByName,
    by_user: ByName,
    by_database: ByName,
}

/// Counts by name. Names are interned, so they are counted by address (cheap),
/// and merged by text only when a snapshot of the counts is taken.
#[derive(Debug, Default)]
pub(super) struct ByName(HashMap<usize, (ArcStr, u32), BuildHasherDefault<KeyHasher>>);

impl ByName {
    pub(super) fn add(&mut self, name: &ArcStr) {
        let address = name.as_ptr() as usize;
        self.0.entry(address).or_insert_with(|| (name.clone(), 0)).1 += 1;
    }

    pub(super) fn remove(&mut self, name: &ArcStr) {
        let address = name.as_ptr() as usize;
        if let Some(entry) = self.0.get_mut(&address) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.0.remove(&address);
            }
        }
    }

    pub(super) fn snapshot(&self) -> Vec<v1::SlotCount> {
        let mut merged: BTreeMap<&str, u32> = BTreeMap::new();
        for (name, count) in self.0.values() {
            *merged.entry(name).or_default() += count;
        }
        merged
            .into_iter()
            .map(|(name, count)| v1::SlotCount {
                name: name.to_owned(),
                count,
            })
            .collect()
    }
}

impl SlotCounter {
    pub(super) fn state(s: &Session) -> &'static str {
        match s.state.as_pg() {
            "" => "unknown",
            word => word,
        }
    }

    /// Counts `s`: in the slots if it is a client backend (the only kind that
    /// takes a slot).
    pub(super) fn add(&mut self, s: &Session) {
        if s.state == SessionState::NotVisible {
            self.not_visible += 1;
        }
        if s.backend_type != "client backend" {
            return;
        }
        self.used += 1;
        *self.by_state.entry(Self::state(s)).or_default() += 1;
        self.by_application.add(&s.application_name);
        self.by_user.add(&s.user);
        self.by_database.add(&s.database);
    }

    /// A known session has ended: it no longer counts, and its key goes to
    /// `removed` if it was reported.
    pub(super) fn ended(&mut self, k: Known, removed: &mut Vec<SessionKey>) {
        self.remove(&k.session);
        if !k.own {
            removed.push(k.session.key());
        }
    }

    /// Takes back what [`SlotCounter::add`] counted for `s`.
    pub(super) fn remove(&mut self, s: &Session) {
        if s.state == SessionState::NotVisible {
            self.not_visible = self.not_visible.saturating_sub(1);
        }
        if s.backend_type != "client backend" {
            return;
        }
        self.used = self.used.saturating_sub(1);
        if let Some(n) = self.by_state.get_mut(Self::state(s)) {
            *n -= 1;
            if *n == 0 {
                self.by_state.remove(Self::state(s));
            }
        }
        self.by_application.remove(&s.application_name);
        self.by_user.remove(&s.user);
        self.by_database.remove(&s.database);
    }

    pub(super) fn snapshot(&self) -> v1::ConnectionSlots {
        v1::ConnectionSlots {
            used: self.used,
            by_state: self
                .by_state
                .iter()
                .map(|(name, count)| v1::SlotCount {
                    name: (*name).to_owned(),
                    count: *count,
                })
                .collect(),
            by_application: self.by_application.snapshot(),
            by_user: self.by_user.snapshot(),
            by_database: self.by_database.snapshot(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_client_backends_and_follow_changes() {
        let session = |state, app: &str| Session {
            state,
            application_name: app.into(),
            user: "app".into(),
            database: "orders".into(),
            backend_type: "client backend".into(),
            ..Default::default()
        };
        let mut c = SlotCounter::default();
        let sessions = [
            session(SessionState::Active, "web"),
            session(SessionState::Idle, "web"),
            session(SessionState::NotVisible, ""),
        ];
        for s in &sessions {
            c.add(s);
        }
        c.add(&Session {
            backend_type: "checkpointer".into(),
            ..Default::default()
        });
        let slots = c.snapshot();
        assert_eq!(slots.used, 3, "background processes take no slot");
        let names: Vec<_> = slots
            .by_state
            .iter()
            .map(|s| (s.name.as_str(), s.count))
            .collect();
        assert_eq!(names, [("active", 1), ("idle", 1), ("not visible", 1)]);
        assert_eq!(slots.by_application[1].name, "web");
        assert_eq!(slots.by_application[1].count, 2, "merged by text");
        assert_eq!(slots.by_database[0].count, 3);

        // A session changes state, another ends.
        c.remove(&sessions[1]);
        c.add(&session(SessionState::Active, "web"));
        c.remove(&sessions[2]);
        let slots = c.snapshot();
        assert_eq!(slots.used, 2);
        let names: Vec<_> = slots
            .by_state
            .iter()
            .map(|s| (s.name.as_str(), s.count))
            .collect();
        assert_eq!(names, [("active", 2)]);
        assert_eq!(slots.by_application.len(), 1);
    }
}
