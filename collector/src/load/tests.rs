use super::*;

fn tuple(user: &str, query: u64, wait: (&str, &str)) -> Tuple {
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
