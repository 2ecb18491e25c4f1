use super::keys::Parsed;
use super::*;

pub(crate) fn tuple(user: &str, query: u64, wait: (&str, &str)) -> Tuple {
    Tuple {
        class: Class::Active,
        wait_type: wait.0.into(),
        wait_event: wait.1.into(),
        query,
        user: user.into(),
        database: "orders".into(),
        application: "web".into(),
        client: "10.0.0.7".into(),
        backend_type: "client backend".into(),
    }
}

#[test]
fn bound_keeps_the_top_keys_of_each_dimension_and_every_count() {
    let mut b = Bucket::holding(0, FINE_US);
    b.samples = 10;
    // 80 users, user i seen i+1 times, each with its own query.
    for i in 0..80u32 {
        b.tuples.push((
            tuple(&format!("u{i:02}"), u64::from(i) + 1, ("CPU", "")),
            i + 1,
        ));
    }
    let total: u32 = b.tuples.iter().map(|(_, n)| n).sum();
    b.bound();
    assert_eq!(b.tuples.iter().map(|(_, n)| n).sum::<u32>(), total);
    let users: HashSet<String> = b.tuples.iter().map(|(t, _)| Dim::User.of(t)).collect();
    assert_eq!(users.len(), TOP_KEYS + 1, "the top 50 and other");
    assert!(users.contains("u79") && users.contains("other") && !users.contains("u00"));
    let queries: HashSet<String> = b.tuples.iter().map(|(t, _)| Dim::Query.of(t)).collect();
    assert_eq!(queries.len(), TOP_KEYS + 1);
    assert!(b.tuples.len() <= MAX_TUPLES);
    // Largest first.
    assert!(b.tuples.windows(2).all(|w| w[0].1 >= w[1].1));
}

#[test]
fn bound_caps_tuples_and_keeps_classes_apart() {
    let mut b = Bucket::holding(0, FINE_US);
    // 40 users × 40 queries: 1,600 tuples, every dimension within its top.
    for u in 0..40u64 {
        for q in 0..40u64 {
            b.tuples
                .push((tuple(&format!("u{u}"), q + 1, ("IO", "DataFileRead")), 1));
        }
    }
    let mut idle = tuple("u0", 1, ("Client", "ClientRead"));
    idle.class = Class::IdleInTransaction;
    b.tuples.push((idle, 1));
    b.samples = 1;
    b.bound();
    assert!(b.tuples.len() <= MAX_TUPLES && b.tuples.len() >= MAX_TUPLES - 2);
    assert_eq!(b.average(Class::Active), 1600.0);
    assert_eq!(b.average(Class::IdleInTransaction), 1.0);
}

#[test]
fn buckets_come_back_as_stored() {
    let mut b = Bucket::holding(1_800_000_000_000_000, COARSE_US);
    b.samples = 60;
    b.covered_us = 60_000_000;
    b.tuples = vec![
        (tuple("app", 7, ("Lock", "transactionid")), 30),
        (tuple("app", 8, ("CPU", "")), 12),
    ];
    b.churn.rows.push((
        churn::ChurnKey {
            database: "orders".into(),
            application: "web".into(),
            user: "app".into(),
            client: "10.0.0.7".into(),
        },
        churn::ChurnCount {
            started: 5,
            ended: 4,
            lifetime_us: 800_000,
        },
    ));
    b.churn.lifetimes = vec![(20, 4)];
    b.churn.lifetime_max_us = 300_000;
    b.churn.established = vec![("orders".into(), 40)];
    let bytes = b.encode();
    assert_eq!(Bucket::decode(b.start, b.len_us, &bytes), Some(b));
    assert_eq!(Bucket::decode(0, FINE_US, b"\xff\xff"), None);
}

#[test]
fn keys_read_as_people_name_them() {
    let t = tuple("app", 0xabc, ("Lock", "transactionid"));
    assert_eq!(Dim::Wait.of(&t), "Lock:transactionid");
    assert_eq!(Dim::WaitType.of(&t), "Lock");
    assert_eq!(Dim::Query.of(&t), "0000000000000abc");
    let cpu = tuple(OTHER, OTHER_QUERY, ("CPU", ""));
    assert_eq!(Dim::Wait.of(&cpu), "CPU");
    assert_eq!(Dim::User.of(&cpu), "other");
    assert_eq!(Dim::Query.of(&cpu), "other");
}

/// A minute of one tuple per user given, starting at `start`.
pub(crate) fn minute_of(start: Micros, users: &[&str]) -> MinuteLoad {
    let mut coarse = Bucket::holding(start, COARSE_US);
    coarse.samples = 60;
    coarse.covered_us = 60_000_000;
    coarse.tuples = users
        .iter()
        .enumerate()
        .map(|(i, u)| (tuple(u, 100 + i as u64, ("CPU", "")), 5))
        .collect();
    let mut fine = Bucket::holding(start, FINE_US);
    fine.samples = 10;
    fine.covered_us = 10_000_000;
    fine.tuples = coarse.tuples.clone();
    MinuteLoad {
        coarse,
        fine: vec![fine],
    }
}

/// `m` as the store writes it, naming db-1's dictionary in `d`.
fn row(d: &mut dictionaries::Dictionaries, m: &MinuteLoad) -> Vec<u8> {
    d.minute("db-1", &m.pack())
        .expect("a packed minute re-indexes")
}

/// Reads `body` back with the dictionaries `rows` hold.
fn read_back(start: Micros, body: &[u8], rows: &[dictionaries::KeysRow]) -> Option<MinuteLoad> {
    let parsed = MinuteLoad::parse(start, body)?;
    let row = rows.iter().rfind(|r| r.id == parsed.keys())?;
    parsed.with(&keys::Keys::decode(&row.body)?)
}

#[test]
fn rows_name_their_servers_hourly_dictionary_and_read_back_with_it() {
    let hour = 1_800_000_000_000_000 - 1_800_000_000_000_000 % hours::HOUR_US;
    let mut d = dictionaries::Dictionaries::default();
    let first = minute_of(hour, &["app", "report"]);
    let second = minute_of(hour + COARSE_US, &["app", "batch"]);
    let (a, b) = (row(&mut d, &first), row(&mut d, &second));
    let written = d.unwritten();
    assert_eq!(written.len(), 1, "one dictionary for the hour: {written:?}");
    assert!(
        a.len() < first.encode().len(),
        "smaller than a row with its own strings"
    );
    assert_eq!(
        read_back(first.coarse.start, &a, &written),
        Some(first.clone())
    );
    assert_eq!(read_back(second.coarse.start, &b, &written), Some(second));
    // Not committed (the transaction failed): the same ops, encoded again,
    // still say the dictionary is to be written.
    let again = row(&mut d, &first);
    assert_eq!(again, a);
    assert_eq!(d.unwritten(), written);
    d.committed();
    assert!(d.unwritten().is_empty(), "written once");
    // Nothing new: nothing to write; a new string: the dictionary again.
    row(&mut d, &first);
    assert!(d.unwritten().is_empty());
    row(&mut d, &minute_of(hour + 2 * COARSE_US, &["new"]));
    assert_eq!(d.unwritten().len(), 1);
    d.committed();
    // The next hour: a dictionary of its own, under another id.
    let next = minute_of(hour + hours::HOUR_US, &["app"]);
    let c = row(&mut d, &next);
    let rows = d.unwritten();
    assert_eq!(rows.len(), 1);
    assert_ne!(rows[0].id, written[0].id);
    assert_eq!(read_back(next.coarse.start, &c, &rows), Some(next.clone()));
    // Another writer (another collector) names its own dictionary.
    let mut other = dictionaries::Dictionaries::default();
    row(&mut other, &next);
    assert_ne!(other.unwritten()[0].id, rows[0].id);
    // A row whose dictionary is not found does not decode (and is skipped
    // by its reader), rather than naming the wrong strings.
    assert_eq!(
        MinuteLoad::parse(next.coarse.start, &c).and_then(|p| p.with(&keys::Keys::default())),
        None
    );
}

#[test]
fn a_dictionary_whose_hour_ended_unwritten_is_still_written() {
    let hour = 1_800_000_000_000_000 - 1_800_000_000_000_000 % hours::HOUR_US;
    let mut d = dictionaries::Dictionaries::default();
    let late = minute_of(hour + 59 * COARSE_US, &["app"]);
    let next = minute_of(hour + hours::HOUR_US, &["app"]);
    let (a, b) = (row(&mut d, &late), row(&mut d, &next));
    let rows = d.unwritten();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(read_back(late.coarse.start, &a, &rows), Some(late));
    assert_eq!(read_back(next.coarse.start, &b, &rows), Some(next));
    let read = statements::Read {
        since_us: 1,
        by_query: vec![(100, statements::Totals::default())],
    };
    let body = d.statements("db-1", hour + hours::HOUR_US, &read);
    let parsed = statements::Read::parse(&body).unwrap();
    let row = d
        .unwritten()
        .into_iter()
        .find(|r| r.id == parsed.keys())
        .unwrap();
    assert_eq!(
        parsed.with(&keys::Keys::decode(&row.body).unwrap()),
        Some(read)
    );
}

#[test]
fn a_late_row_names_a_dictionary_of_its_own_hour() {
    let hour = 1_800_000_000_000_000 - 1_800_000_000_000_000 % hours::HOUR_US;
    let mut d = dictionaries::Dictionaries::default();
    let now = minute_of(hour + 2 * hours::HOUR_US, &["app"]);
    row(&mut d, &now);
    d.committed();
    // An agent's spool brings a minute of two hours before.
    let late = minute_of(hour + 5 * COARSE_US, &["late-app"]);
    let body = row(&mut d, &late);
    let rows = d.unwritten();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].hour, hour, "the late row's own hour");
    let keys = keys::Keys::decode(&rows[0].body).unwrap();
    assert!(keys.own_hour);
    assert!(keys.strings.iter().any(|s| &**s == "late-app"));
    assert_eq!(
        read_back(late.coarse.start, &body, &rows),
        Some(late.clone())
    );
    // The hour being written keeps its own dictionary, which the late
    // row's strings did not go into.
    let again = row(&mut d, &now);
    let current = MinuteLoad::parse(now.coarse.start, &again).unwrap().keys();
    assert_ne!(current, rows[0].id);
    d.committed();
    assert!(d.unwritten().is_empty());
    // Late again after the commit: a dictionary of that hour anew.
    row(&mut d, &late);
    let second = d.unwritten();
    assert_eq!((second.len(), second[0].hour), (1, hour));
    assert_ne!(second[0].id, rows[0].id);
}

/// The bound as it was written on strings before it worked on interned ids
/// ([`intern`]): the oracle the interned one must agree with.
fn reference_bound(b: &mut Bucket) {
    use foldhash::{HashMap, HashMapExt};
    fn summed(tuples: Vec<(Tuple, u32)>) -> Vec<(Tuple, u32)> {
        let mut sums: HashMap<Tuple, u32> = HashMap::with_capacity(tuples.len());
        for (t, n) in tuples {
            *sums.entry(t).or_default() += n;
        }
        let mut tuples: Vec<(Tuple, u32)> = sums.into_iter().collect();
        tuples.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        tuples
    }
    fn top<K: Ord + Clone + std::hash::Hash + Eq>(totals: HashMap<K, u64>) -> Vec<K> {
        let mut all: Vec<(K, u64)> = totals.into_iter().collect();
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(TOP_KEYS);
        let mut keys: Vec<K> = all.into_iter().map(|(k, _)| k).collect();
        keys.sort_unstable();
        keys
    }
    let this = b;
    let mut tuples = std::mem::take(&mut this.tuples);
    let other: ArcStr = OTHER.into();
    // With no more tuples than keys a dimension may keep, none has too
    // many: only equal tuples are summed.
    if tuples.len() <= TOP_KEYS {
        this.tuples = summed(tuples);
        this.churn.bound();
        return;
    }
    // Each dimension's keys beyond its top ones become `other`.
    type Field = fn(&mut Tuple) -> &mut ArcStr;
    let fields: [Field; 5] = [
        |t| &mut t.user,
        |t| &mut t.database,
        |t| &mut t.application,
        |t| &mut t.client,
        |t| &mut t.backend_type,
    ];
    for field in fields {
        let mut totals: HashMap<ArcStr, u64> = HashMap::new();
        for (t, n) in tuples.iter_mut() {
            *totals.entry(field(t).clone()).or_default() += u64::from(*n);
        }
        if totals.len() > TOP_KEYS {
            let keep = top(totals);
            for (t, _) in tuples.iter_mut() {
                if keep.binary_search(&*field(t)).is_err() {
                    *field(t) = other.clone();
                }
            }
        }
    }
    // The wait, as a pair, and the query.
    let mut waits: HashMap<(ArcStr, ArcStr), u64> = HashMap::new();
    let mut queries: HashMap<u64, u64> = HashMap::new();
    for (t, n) in &tuples {
        *waits
            .entry((t.wait_type.clone(), t.wait_event.clone()))
            .or_default() += u64::from(*n);
        *queries.entry(t.query).or_default() += u64::from(*n);
    }
    if waits.len() > TOP_KEYS {
        let keep = top(waits);
        for (t, _) in tuples.iter_mut() {
            if keep
                .binary_search(&(t.wait_type.clone(), t.wait_event.clone()))
                .is_err()
            {
                t.wait_type = other.clone();
                t.wait_event = other.clone();
            }
        }
    }
    if queries.len() > TOP_KEYS {
        let keep = top(queries);
        for (t, _) in tuples.iter_mut() {
            if keep.binary_search(&t.query).is_err() {
                t.query = OTHER_QUERY;
            }
        }
    }
    let mut tuples = summed(tuples);
    if tuples.len() > MAX_TUPLES {
        // One `other` tuple per class, so that classes never mix: room
        // is left for one of each.
        let rest: Vec<(Tuple, u32)> = tuples.split_off(MAX_TUPLES - 3);
        let mut by_class: Vec<(Class, u32)> = Vec::new();
        for (t, n) in rest {
            match by_class.iter_mut().find(|(c, _)| *c == t.class) {
                Some((_, sum)) => *sum += n,
                None => by_class.push((t.class, n)),
            }
        }
        for (class, n) in by_class {
            tuples.push((
                Tuple {
                    class,
                    wait_type: other.clone(),
                    wait_event: other.clone(),
                    query: OTHER_QUERY,
                    user: other.clone(),
                    database: other.clone(),
                    application: other.clone(),
                    client: other.clone(),
                    backend_type: other.clone(),
                },
                n,
            ));
        }
    }
    this.tuples = tuples;
    this.churn.bound();
}

/// Numbers below `n`, from a xorshift generator seeded with `seed`: the
/// same run every time.
pub(crate) fn below(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}

#[test]
fn bound_on_interned_strings_agrees_with_bound_on_strings() {
    let mut next = below(0x9e37_79b9_7f4a_7c15);
    // Small buckets, buckets over the keys a dimension keeps and over the
    // tuples a bucket keeps; many ties; `other` and empty strings among the
    // keys; equal strings at different addresses.
    for (tuples, keys) in [(30, 5), (200, 80), (1500, 70), (3000, 400), (1200, 3)] {
        let mut b = Bucket::holding(0, FINE_US);
        b.samples = 10;
        for _ in 0..tuples {
            let key = |n: u64| match n {
                0 => OTHER.to_owned(),
                1 => String::new(),
                n => format!("k{n}"),
            };
            let mut t = tuple(&key(next(keys)), next(keys * 2), ("IO", "DataFileRead"));
            t.class =
                [Class::Active, Class::IdleInTransaction, Class::Background][next(3) as usize];
            t.wait_event = key(next(keys)).into();
            t.application = key(next(keys)).into();
            t.client = key(next(keys)).into();
            t.database = key(next(4)).into();
            b.tuples.push((t, 1 + next(3) as u32));
        }
        let mut reference = b.clone();
        reference_bound(&mut reference);
        b.bound();
        assert_eq!(b.tuples, reference.tuples, "{tuples} tuples of {keys} keys");
    }
}

#[test]
fn a_packed_minute_unpacks_to_itself_in_a_fraction_of_the_room() {
    // A busy server's minute: 300 tuples (8 users, 40 applications, 60
    // clients, 4 waits, 37 queries), and 10 s buckets of 110 of them each.
    let users: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    let waits = [
        ("CPU", ""),
        ("IO", "DataFileRead"),
        ("Lock", "transactionid"),
        ("LWLock", "WALWrite"),
    ];
    let mut coarse = Bucket::holding(0, COARSE_US);
    coarse.samples = 60;
    coarse.covered_us = 60_000_000;
    coarse.tuples = (0..300usize)
        .map(|i| {
            let mut t = tuple(&users[i % 8], 1000 + (i % 37) as u64, waits[i % 4]);
            t.application = format!("app-{}", i % 40).into();
            t.client = format!("10.20.{}.{}", i % 60, i % 7).into();
            (t, 1 + (i % 5) as u32)
        })
        .collect();
    let fine: Vec<Bucket> = (0..6)
        .map(|k| {
            let mut f = Bucket::holding(k * FINE_US, FINE_US);
            f.samples = 10;
            f.covered_us = 10_000_000;
            f.tuples = (0..110)
                .map(|i| (coarse.tuples[(i * 3 + k as usize * 17) % 300].0.clone(), 1))
                .collect();
            f
        })
        .collect();
    let m = MinuteLoad { coarse, fine };
    let packed = m.pack();
    assert_eq!(packed.start(), 0);
    assert_eq!(packed.samples(), 60);
    assert_eq!(packed.unpack().as_ref(), Some(&m));
    // The store writes it as it is packed, re-indexed into the server's
    // dictionary, churn and 10 s buckets with it: here a dictionary that
    // already holds other strings and fingerprints (none the minute has), so
    // that every index moves, and churn counts no index could be.
    let mut m = m;
    m.coarse.churn.rows.push((
        churn::ChurnKey {
            database: "billing".into(),
            application: "app-3".into(),
            user: "user7".into(),
            client: "10.0.0.7".into(),
        },
        churn::ChurnCount {
            started: 1000,
            ended: 999,
            lifetime_us: 800_000,
        },
    ));
    m.coarse.churn.lifetimes = vec![(20, 4)];
    m.coarse.churn.established = vec![("billing".into(), 40)];
    let mut d = dictionaries::Dictionaries::default();
    let mut first = minute_of(0, &["someone", "else"]);
    for (t, _) in &mut first.coarse.tuples {
        (t.wait_type, t.wait_event) = ("Timeout".into(), "PgSleep".into());
        (t.database, t.application) = ("elsewhere".into(), "cron".into());
        (t.client, t.backend_type) = ("192.0.2.1".into(), "walsender".into());
        t.query += 1_000_000;
    }
    first.fine[0].tuples = first.coarse.tuples.clone();
    row(&mut d, &first);
    let body = row(&mut d, &m);
    let rows = d.unwritten();
    assert_eq!(read_back(0, &body, &rows), Some(m.clone()));
    assert_eq!(read_back(0, &row(&mut d, &first), &rows), Some(first));
    // Damaged bytes are refused, not stored as something else.
    let damaged = PackedMinute::damaged(0);
    assert_eq!(d.minute("db-1", &damaged), None);
    let entries = m.coarse.tuples.len() + m.fine.iter().map(|f| f.tuples.len()).sum::<usize>();
    // A tuple's seven strings are 8-byte `ArcStr`s (they were 16-byte
    // `Arc<str>`s when this asked for a tenth of the room).
    let as_tuples = entries * std::mem::size_of::<(Tuple, u32)>();
    assert!(
        packed.size() * 6 < as_tuples,
        "packed {} bytes, as tuples {as_tuples}",
        packed.size()
    );
}
