//! The stream's compact form of a session: in a delta, the fields that did not
//! change since the base are left out (`SessionSample.unchanged`), and repeated
//! strings travel once per stream, as dictionary references.
//!
//! The agent sends [`sample`]s and [`Dictionary::compact`]s what it sends; the
//! collector [`Resolver::snapshot`]s what it receives, and [`fill`]s what was
//! left out from the session in the base.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{ArcStr, Session};
use crate::v1;

/// The bits of `SessionSample.unchanged`, one per field, in the order the
/// proto documents.
pub mod field {
    pub const DATABASE: u32 = 1 << 0;
    pub const USER: u32 = 1 << 1;
    pub const APPLICATION_NAME: u32 = 1 << 2;
    pub const CLIENT: u32 = 1 << 3;
    pub const STATE: u32 = 1 << 4;
    pub const XACT_START: u32 = 1 << 5;
    pub const QUERY_START: u32 = 1 << 6;
    pub const STATE_CHANGE: u32 = 1 << 7;
    pub const WAIT_EVENT_TYPE: u32 = 1 << 8;
    pub const WAIT_EVENT: u32 = 1 << 9;
    pub const QUERY: u32 = 1 << 10;
    pub const BLOCKED_BY: u32 = 1 << 11;
    pub const BACKEND_TYPE: u32 = 1 << 12;
    pub const LEADER_PID: u32 = 1 << 13;
    pub const QUERY_ID: u32 = 1 << 14;
    pub const FINGERPRINT: u32 = 1 << 15;
    /// Every field a mask may name.
    pub const ALL: u32 = (1 << 16) - 1;
}

fn same(a: &ArcStr, b: &ArcStr) -> bool {
    ArcStr::ptr_eq(a, b) || a == b
}

/// The fields that `new` shares with `old`, the same session in the base.
pub fn unchanged(new: &Session, old: &Session) -> u32 {
    use field::*;
    let mut mask = 0;
    let mut bit = |equal: bool, b: u32| {
        if equal {
            mask |= b;
        }
    };
    bit(same(&new.database, &old.database), DATABASE);
    bit(same(&new.user, &old.user), USER);
    bit(
        same(&new.application_name, &old.application_name),
        APPLICATION_NAME,
    );
    bit(same(&new.client, &old.client), CLIENT);
    bit(new.state == old.state, STATE);
    bit(new.xact_start_us == old.xact_start_us, XACT_START);
    bit(new.query_start_us == old.query_start_us, QUERY_START);
    bit(new.state_change_us == old.state_change_us, STATE_CHANGE);
    bit(
        same(&new.wait_event_type, &old.wait_event_type),
        WAIT_EVENT_TYPE,
    );
    bit(same(&new.wait_event, &old.wait_event), WAIT_EVENT);
    bit(same(&new.query, &old.query), QUERY);
    bit(new.blocked_by == old.blocked_by, BLOCKED_BY);
    bit(same(&new.backend_type, &old.backend_type), BACKEND_TYPE);
    bit(new.leader_pid == old.leader_pid, LEADER_PID);
    bit(new.query_id == old.query_id, QUERY_ID);
    bit(new.fingerprint == old.fingerprint, FINGERPRINT);
    mask
}

/// `s` as the wire carries it, without the fields `mask` names (the
/// collector holds them from the base), and saying so: each string is
/// copied only when it is sent.
pub fn sample(s: &Session, mask: u32) -> v1::SessionSample {
    use field::*;
    let mask = mask & ALL;
    let kept = |b: u32| mask & b == 0;
    let text = |b: u32, t: &ArcStr| {
        if kept(b) {
            t.to_string()
        } else {
            String::new()
        }
    };
    let number = |b: u32, n: Option<i64>| if kept(b) { n.unwrap_or(0) } else { 0 };
    v1::SessionSample {
        pid: s.pid,
        backend_start_us: s.backend_start_us,
        database: text(DATABASE, &s.database),
        user: text(USER, &s.user),
        application_name: text(APPLICATION_NAME, &s.application_name),
        client: text(CLIENT, &s.client),
        state: if kept(STATE) {
            v1::SessionState::from(s.state).into()
        } else {
            0
        },
        xact_start_us: number(XACT_START, s.xact_start_us),
        query_start_us: number(QUERY_START, s.query_start_us),
        state_change_us: number(STATE_CHANGE, s.state_change_us),
        wait_event_type: text(WAIT_EVENT_TYPE, &s.wait_event_type),
        wait_event: text(WAIT_EVENT, &s.wait_event),
        query: text(QUERY, &s.query),
        blocked_by: if kept(BLOCKED_BY) {
            s.blocked_by.clone()
        } else {
            Vec::new()
        },
        backend_type: text(BACKEND_TYPE, &s.backend_type),
        leader_pid: if kept(LEADER_PID) {
            s.leader_pid.unwrap_or(0)
        } else {
            0
        },
        query_id: number(QUERY_ID, s.query_id),
        query_fingerprint: if kept(FINGERPRINT) { s.fingerprint } else { 0 },
        unchanged: mask,
        ..Default::default()
    }
}

/// [`sample`]`(s, mask)` written as field `tag` of the message being built in
/// `buf`: the same bytes prost writes for it, but no string is copied into a
/// `String` of its own first. The history store writes every frame so.
pub fn encode_sample(tag: u32, s: &Session, mask: u32, buf: &mut Vec<u8>) {
    use field::*;
    use prost::encoding::{fixed64, int32, int64, uint32};
    let mask = mask & ALL;
    let kept = |b: u32| mask & b == 0;
    nested(tag, buf, |buf| {
        let text = |buf: &mut Vec<u8>, tag: u32, b: u32, t: &str| {
            if kept(b) {
                encode_str(tag, t, buf);
            }
        };
        let number = |buf: &mut Vec<u8>, tag: u32, b: u32, n: Option<i64>| match n {
            Some(n) if kept(b) && n != 0 => int64::encode(tag, &n, buf),
            _ => {}
        };
        if s.pid != 0 {
            int32::encode(1, &s.pid, buf);
        }
        if s.backend_start_us != 0 {
            int64::encode(2, &s.backend_start_us, buf);
        }
        text(buf, 3, DATABASE, &s.database);
        text(buf, 4, USER, &s.user);
        text(buf, 5, APPLICATION_NAME, &s.application_name);
        text(buf, 6, CLIENT, &s.client);
        let state = i32::from(v1::SessionState::from(s.state));
        if kept(STATE) && state != 0 {
            int32::encode(7, &state, buf);
        }
        number(buf, 8, XACT_START, s.xact_start_us);
        number(buf, 9, QUERY_START, s.query_start_us);
        number(buf, 10, STATE_CHANGE, s.state_change_us);
        text(buf, 11, WAIT_EVENT_TYPE, &s.wait_event_type);
        text(buf, 12, WAIT_EVENT, &s.wait_event);
        text(buf, 13, QUERY, &s.query);
        if kept(BLOCKED_BY) && !s.blocked_by.is_empty() {
            int32::encode_packed(14, &s.blocked_by, buf);
        }
        text(buf, 15, BACKEND_TYPE, &s.backend_type);
        match s.leader_pid {
            Some(pid) if kept(LEADER_PID) && pid != 0 => int32::encode(16, &pid, buf),
            _ => {}
        }
        number(buf, 17, QUERY_ID, s.query_id);
        if kept(FINGERPRINT) && s.fingerprint != 0 {
            fixed64::encode(18, &s.fingerprint, buf);
        }
        if mask != 0 {
            uint32::encode(30, &mask, buf);
        }
    });
}

/// A string field as prost writes it (nothing when empty), from a `&str`.
pub fn encode_str(tag: u32, text: &str, buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    if !text.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(text.len() as u64, buf);
        buf.extend_from_slice(text.as_bytes());
    }
}

/// A message field `tag` whose fields `body` writes to the end of `buf`: its
/// length is put in front of them once they are written, so that it need not
/// be counted first. Two bytes are kept for it, the length of a message of
/// 128 bytes to 16 KiB (a session's, most often); a length of another size
/// moves the fields once, for each message they are nested in.
pub fn nested(tag: u32, buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    const KEPT: usize = 2;
    encode_key(tag, WireType::LengthDelimited, buf);
    let start = buf.len();
    buf.extend_from_slice(&[0; KEPT]);
    body(buf);
    let mut length = [0u8; 10];
    let size = {
        let mut w = &mut length[..];
        encode_varint((buf.len() - start - KEPT) as u64, &mut w);
        10 - w.len()
    };
    if size == KEPT {
        buf[start..start + KEPT].copy_from_slice(&length[..KEPT]);
    } else {
        buf.splice(start..start + KEPT, length[..size].iter().copied());
    }
}

/// Takes the fields `mask` names from `base`, the same session in the
/// delta's base.
pub fn fill(s: &mut Session, base: &Session, mask: u32) {
    use field::*;
    let has = |b: u32| mask & b != 0;
    if has(DATABASE) {
        s.database = base.database.clone();
    }
    if has(USER) {
        s.user = base.user.clone();
    }
    if has(APPLICATION_NAME) {
        s.application_name = base.application_name.clone();
    }
    if has(CLIENT) {
        s.client = base.client.clone();
    }
    if has(STATE) {
        s.state = base.state;
    }
    if has(XACT_START) {
        s.xact_start_us = base.xact_start_us;
    }
    if has(QUERY_START) {
        s.query_start_us = base.query_start_us;
    }
    if has(STATE_CHANGE) {
        s.state_change_us = base.state_change_us;
    }
    if has(WAIT_EVENT_TYPE) {
        s.wait_event_type = base.wait_event_type.clone();
    }
    if has(WAIT_EVENT) {
        s.wait_event = base.wait_event.clone();
    }
    if has(QUERY) {
        s.query = base.query.clone();
    }
    if has(BLOCKED_BY) {
        s.blocked_by = base.blocked_by.clone();
    }
    if has(BACKEND_TYPE) {
        s.backend_type = base.backend_type.clone();
    }
    if has(LEADER_PID) {
        s.leader_pid = base.leader_pid;
    }
    if has(QUERY_ID) {
        s.query_id = base.query_id;
    }
    if has(FINGERPRINT) {
        s.fingerprint = base.fingerprint;
    }
}

/// The string fields that travel as references, each with its reference.
fn refs(wire: &mut v1::SessionSample) -> [(&mut String, &mut u32); 7] {
    [
        (&mut wire.database, &mut wire.database_ref),
        (&mut wire.user, &mut wire.user_ref),
        (&mut wire.application_name, &mut wire.application_name_ref),
        (&mut wire.wait_event_type, &mut wire.wait_event_type_ref),
        (&mut wire.wait_event, &mut wire.wait_event_ref),
        (&mut wire.query, &mut wire.query_ref),
        (&mut wire.backend_type, &mut wire.backend_type_ref),
    ]
}

/// The agent's dictionary: every string it gave an id, bounded. Once full,
/// new strings travel as they are.
#[derive(Debug, Default)]
pub struct Dictionary {
    ids: HashMap<Arc<str>, u32>,
    values: Vec<Arc<str>>,
    bytes: usize,
    /// Entries made since [`Dictionary::take_added`] was last called.
    added: Vec<v1::DictionaryEntry>,
}

impl Dictionary {
    /// The most entries it holds.
    pub const MAX_ENTRIES: usize = 16_384;
    /// The most bytes of strings it holds.
    pub const MAX_BYTES: usize = 4 << 20;

    /// Replaces the strings of `wire` with references, giving new strings an
    /// id while there is room.
    pub fn compact(&mut self, wire: &mut v1::SessionSample) {
        for (text, reference) in refs(wire) {
            if text.is_empty() {
                continue;
            }
            if let Some(id) = self.id(text) {
                *reference = id;
                text.clear();
            }
        }
    }

    fn id(&mut self, text: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(text) {
            return Some(*id);
        }
        if self.values.len() >= Self::MAX_ENTRIES || self.bytes + text.len() > Self::MAX_BYTES {
            return None;
        }
        let value: Arc<str> = text.into();
        let id = self.values.len() as u32 + 1;
        self.values.push(value.clone());
        self.ids.insert(value, id);
        self.bytes += text.len();
        self.added.push(v1::DictionaryEntry {
            id,
            value: text.to_owned(),
        });
        Some(id)
    }

    /// The entries made since the last call.
    pub fn take_added(&mut self) -> Vec<v1::DictionaryEntry> {
        std::mem::take(&mut self.added)
    }

    /// Every entry, for the first batch of a new stream.
    pub fn entries(&self) -> impl Iterator<Item = v1::DictionaryEntry> + '_ {
        self.values
            .iter()
            .enumerate()
            .map(|(i, v)| v1::DictionaryEntry {
                id: i as u32 + 1,
                value: v.to_string(),
            })
    }

    /// Entries a spool on disk kept from an earlier run, in id order; an entry
    /// that does not follow the last is ignored.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = v1::DictionaryEntry>) {
        for e in entries {
            if e.id as usize == self.values.len() + 1 {
                let value: Arc<str> = e.value.into();
                self.bytes += value.len();
                self.ids.insert(value.clone(), e.id);
                self.values.push(value);
            }
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The collector's side of one stream's dictionary, bounded like the
/// agent's. Ids run from 1 to [`Dictionary::MAX_ENTRIES`], as an agent gives
/// them, so an entry is found by its place rather than by a hash: every
/// string of every session a stream sends is looked up here.
#[derive(Debug, Default)]
pub struct Resolver {
    values: Vec<Option<Entry>>,
    bytes: usize,
}

/// A dictionary entry, and the same text as a name kept for the process's
/// life (see [`crate::names`]), once a session names it so.
#[derive(Debug)]
struct Entry {
    text: ArcStr,
    name: std::cell::OnceCell<ArcStr>,
}

impl Resolver {
    /// Takes a batch's additions; an agent that sends more than a dictionary
    /// may hold is refused.
    pub fn add(&mut self, entries: Vec<v1::DictionaryEntry>) -> Result<(), String> {
        for e in entries {
            let place = match e.id as usize {
                0 => return Err("dictionary id 0 is not an id".to_owned()),
                id if id > Dictionary::MAX_ENTRIES => {
                    return Err(format!(
                        "dictionary id {id} is past the last a dictionary may give ({})",
                        Dictionary::MAX_ENTRIES
                    ));
                }
                id => id - 1,
            };
            if self.values.len() <= place {
                self.values.resize_with(place + 1, || None);
            }
            self.bytes += e.value.len();
            let entry = Entry {
                text: e.value.into(),
                name: std::cell::OnceCell::new(),
            };
            if let Some(old) = self.values[place].replace(entry) {
                self.bytes -= old.text.len();
            }
            if self.bytes > Dictionary::MAX_BYTES {
                return Err(format!(
                    "the dictionary grew past {} bytes",
                    Dictionary::MAX_BYTES
                ));
            }
        }
        Ok(())
    }

    /// A sample's string: the entry its reference names (shared, not
    /// copied; a name as kept for the process's life), or the field itself;
    /// an unknown reference is named.
    fn text(&self, text: String, reference: u32, name: bool) -> Result<ArcStr, u32> {
        if reference == 0 {
            return Ok(text.into());
        }
        let entry = self
            .values
            .get(reference as usize - 1)
            .and_then(Option::as_ref)
            .ok_or(reference)?;
        Ok(if name {
            entry
                .name
                .get_or_init(|| crate::names::kept(&entry.text))
                .clone()
        } else {
            entry.text.clone()
        })
    }

    /// A sample in the model's terms, its references read.
    pub fn session(&self, wire: v1::SessionSample) -> Result<Session, u32> {
        crate::convert::session_from(wire, &|text, r, name| self.text(text, r, name))
    }

    /// A snapshot in the model's terms, its sessions' references read.
    pub fn snapshot(
        &self,
        wire: v1::Snapshot,
    ) -> Result<crate::model::Snapshot, crate::convert::DecodeError> {
        crate::convert::snapshot_from(wire, &|text, r, name| self.text(text, r, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SessionState;

    fn session() -> Session {
        Session {
            pid: 7,
            backend_start_us: 100,
            database: "orders".into(),
            user: "app".into(),
            application_name: "web".into(),
            client: "10.0.0.1:5000".into(),
            state: SessionState::Idle,
            query_start_us: Some(200),
            state_change_us: Some(210),
            wait_event_type: "Client".into(),
            wait_event: "ClientRead".into(),
            query: "SELECT ?".into(),
            backend_type: "client backend".into(),
            fingerprint: 99,
            ..Default::default()
        }
    }

    #[test]
    fn a_sample_written_directly_decodes_as_the_sample_built_by_prost() {
        use prost::Message;
        // Sessions and masks of every shape: empty and long strings, absent,
        // zero and negative numbers, blocked_by empty and not, every state.
        let seed = std::cell::Cell::new(0x9e37_79b9_7f4a_7c15_u64);
        let next = |n: u64| {
            let mut x = seed.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seed.set(x);
            x % n
        };
        let states: Vec<SessionState> = SessionState::NAMED
            .into_iter()
            .chain([SessionState::Unknown])
            .collect();
        for _ in 0..2000 {
            let text = |what: &str| -> ArcStr {
                match next(3) {
                    0 => "".into(),
                    1 => what.into(),
                    _ => what.repeat(1 + next(60) as usize).into(),
                }
            };
            let (database, user, application_name, client) =
                (text("db"), text("u"), text("app"), text("10.0.0.1:5"));
            let (wait_event_type, wait_event, query, backend_type) = (
                text("Lock"),
                text("tuple"),
                text("SELECT ? "),
                text("client backend"),
            );
            let number = |zero: bool| match next(4) {
                0 => None,
                1 if zero => Some(0),
                2 => Some(-(next(1 << 40) as i64)),
                _ => Some(next(1 << 62) as i64),
            };
            let s = Session {
                pid: next(1 << 31) as i32 - (1 << 30),
                backend_start_us: number(true).unwrap_or(0),
                database,
                user,
                application_name,
                client,
                state: states[next(states.len() as u64) as usize],
                xact_start_us: number(true),
                query_start_us: number(true),
                state_change_us: number(true),
                wait_event_type,
                wait_event,
                query,
                blocked_by: (0..next(4))
                    .map(|_| next(1 << 20) as i32 - (1 << 19))
                    .collect(),
                backend_type,
                leader_pid: number(true).map(|n| n as i32),
                query_id: number(true),
                fingerprint: next(3).saturating_mul(next(u64::MAX)),
            };
            let mask = match next(3) {
                0 => 0,
                1 => next(1 << 17) as u32,
                _ => u32::MAX,
            };
            let mut written = Vec::new();
            encode_sample(5, &s, mask, &mut written);
            let mut by_prost = Vec::new();
            prost::encoding::message::encode(5, &sample(&s, mask), &mut by_prost);
            assert_eq!(written, by_prost, "{s:?} with mask {mask:#x}");
            let body = v1::SessionSample::decode_length_delimited(&written[1..]).unwrap();
            assert_eq!(body, sample(&s, mask));
        }
    }

    #[test]
    fn nested_messages_of_every_length_are_written_as_prost_writes_them() {
        use prost::encoding::bytes;
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000, 2_097_152] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wanted = vec![9, 9];
            bytes::encode(7, &body, &mut wanted);
            let mut buf = vec![9, 9];
            nested(7, &mut buf, |buf| buf.extend_from_slice(&body));
            assert_eq!(buf, wanted, "{len} bytes");
            // Nested in another message, as sessions are in a snapshot.
            let mut outer = Vec::new();
            bytes::encode(2, &wanted, &mut outer);
            let mut buf = Vec::new();
            nested(2, &mut buf, |buf| {
                buf.extend_from_slice(&[9, 9]);
                nested(7, buf, |buf| buf.extend_from_slice(&body));
            });
            assert_eq!(buf, outer, "{len} bytes, nested");
        }
    }

    #[test]
    fn what_did_not_change_is_left_out_and_taken_back_from_the_base() {
        let old = session();
        let mut new = old.clone();
        new.state = SessionState::Active;
        new.state_change_us = Some(300);
        new.query = "UPDATE t SET x = ?".into();
        new.wait_event_type = "".into();
        new.wait_event = "".into();
        let mask = unchanged(&new, &old);
        let wire = sample(&new, mask);
        assert!(wire.database.is_empty() && wire.client.is_empty());
        assert_eq!(wire.query, "UPDATE t SET x = ?");
        assert_eq!(wire.unchanged, mask);
        let mut back = Session::from(wire);
        fill(&mut back, &old, mask);
        assert_eq!(back, new);
    }

    #[test]
    fn strings_travel_once_and_resolve_back() {
        let mut dict = Dictionary::default();
        let s = session();
        let mut first = v1::SessionSample::from(&s);
        dict.compact(&mut first);
        assert!(first.query.is_empty() && first.query_ref != 0);
        let added = dict.take_added();
        assert_eq!(added.len(), 7);
        let mut second = v1::SessionSample::from(&s);
        dict.compact(&mut second);
        assert!(
            dict.take_added().is_empty(),
            "known strings are not sent again"
        );

        let mut resolver = Resolver::default();
        resolver.add(added).unwrap();
        assert_eq!(resolver.session(second).unwrap(), s);
        // A reference the collector was never given is named.
        let unknown = v1::SessionSample {
            query_ref: 999,
            ..Default::default()
        };
        assert_eq!(resolver.session(unknown), Err(999));
    }

    #[test]
    fn names_resolve_as_kept_for_good_and_texts_as_counted() {
        let mut dict = Dictionary::default();
        let s = session();
        let mut wire = v1::SessionSample::from(&s);
        dict.compact(&mut wire);
        let mut resolver = Resolver::default();
        resolver.add(dict.take_added()).unwrap();
        let first = resolver.session(wire.clone()).unwrap();
        let second = resolver.session(wire).unwrap();
        assert_eq!(first, s);
        for name in [
            &first.database,
            &first.user,
            &first.application_name,
            &first.wait_event_type,
            &first.wait_event,
            &first.backend_type,
        ] {
            assert!(ArcStr::is_static(name), "{name} is kept");
        }
        assert!(ArcStr::ptr_eq(&first.database, &second.database));
        // Another stream's dictionary, another entry of the same text: the
        // one name kept.
        let mut other = Resolver::default();
        other
            .add(vec![v1::DictionaryEntry {
                id: 1,
                value: "orders".into(),
            }])
            .unwrap();
        let third = other
            .session(v1::SessionSample {
                database_ref: 1,
                ..Default::default()
            })
            .unwrap();
        assert!(ArcStr::ptr_eq(&third.database, &first.database));
        // The query's text is shared with the dictionary's entry and counted;
        // the client's address travels in the sample and is a copy of its own.
        assert!(ArcStr::ptr_eq(&first.query, &second.query));
        assert_eq!(ArcStr::strong_count(&first.query), Some(3));
        assert_eq!(ArcStr::strong_count(&first.client), Some(1));
    }

    #[test]
    fn a_resolver_takes_the_ids_an_agent_gives_and_refuses_others() {
        let entry = |id: u32, value: &str| v1::DictionaryEntry {
            id,
            value: value.into(),
        };
        let mut resolver = Resolver::default();
        let last = Dictionary::MAX_ENTRIES as u32;
        resolver
            .add(vec![entry(last, "last"), entry(3, "old"), entry(3, "new")])
            .unwrap();
        let by = |r: u32| {
            resolver.session(v1::SessionSample {
                query_ref: r,
                ..Default::default()
            })
        };
        assert_eq!(&*by(last).unwrap().query, "last");
        assert_eq!(&*by(3).unwrap().query, "new", "a later entry replaces one");
        assert_eq!(by(2), Err(2), "a gap is unknown, not empty");
        // As a name too, once one was kept of the entry it replaces.
        let database = |resolver: &Resolver| {
            resolver
                .session(v1::SessionSample {
                    database_ref: 3,
                    ..Default::default()
                })
                .unwrap()
                .database
        };
        assert_eq!(database(&resolver), "new");
        resolver.add(vec![entry(3, "newer")]).unwrap();
        assert_eq!(database(&resolver), "newer");
        assert_eq!(resolver.bytes, "last".len() + "newer".len());
        let past = resolver.add(vec![entry(last + 1, "x")]).unwrap_err();
        assert!(past.contains("16384"), "{past}");
        assert!(resolver.add(vec![entry(0, "x")]).is_err());
        let huge = "x".repeat(Dictionary::MAX_BYTES);
        assert!(resolver.add(vec![entry(1, &huge)]).is_err());
    }

    #[test]
    fn a_full_dictionary_lets_new_strings_travel_as_they_are() {
        let mut dict = Dictionary::default();
        for i in 0..Dictionary::MAX_ENTRIES {
            let mut w = v1::SessionSample {
                query: format!("q{i}"),
                ..Default::default()
            };
            dict.compact(&mut w);
        }
        let mut w = v1::SessionSample {
            query: "one more".into(),
            ..Default::default()
        };
        dict.compact(&mut w);
        assert_eq!((w.query.as_str(), w.query_ref), ("one more", 0));
        // Restored in order, a dictionary gives the same ids.
        let mut again = Dictionary::default();
        again.restore(dict.entries().take(3));
        let mut w = v1::SessionSample {
            query: "q1".into(),
            ..Default::default()
        };
        again.compact(&mut w);
        assert_eq!(w.query_ref, 2);
    }
}
