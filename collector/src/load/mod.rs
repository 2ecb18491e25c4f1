//! DB load: what each server spends its time on.
//!
//! At each sample every active client session counts 1, attributed to its
//! wait (`Type:Event`, or `CPU` when not waiting), its query fingerprint,
//! user, database, application, client host and backend type: a [`Tuple`].
//! A server's counts are summed over 10-second and 1-minute [`Bucket`]s (see
//! [`count`]) together with the samples taken, so that load over any range
//! is the sum over its samples divided by the samples taken, and a gap says
//! itself (fewer samples) rather than counting as zero.
//!
//! Sessions idle in a transaction and active background processes are
//! counted in the same buckets, each as its own [`Class`]: they are not load.
//!
//! A bucket keeps tuples, not one list per dimension, so that any dimension
//! can be filtered by another (the load of one application, by wait). Its
//! size is bounded when it closes ([`Bucket::bound`]): at most
//! [`TOP_KEYS`] keys per dimension (the rest become `other`) and at most
//! [`MAX_TUPLES`] tuples (the smallest are summed into one `other` tuple).
//!
//! Connection churn (sessions started and ended, and their lifetimes) is
//! kept in the same buckets; see [`churn`].

pub mod ask;
pub mod churn;
mod compress;
pub mod count;
pub mod dictionaries;
pub mod hours;
mod intern;
pub mod keys;
pub mod statements;
mod stored;

#[cfg(test)]
use std::collections::HashSet;

use pgfleet_proto::model::ArcStr;
use pgfleet_proto::time::Micros;

pub use churn::Churn;
pub use count::Counter;
pub use stored::{PackedMinute, ParsedMinute, Wanted};

/// The fine resolution, kept for the frame retention (24 h by default).
pub const FINE_US: Micros = 10_000_000;

/// The coarse resolution, kept for the rollup retention (30 days).
pub const COARSE_US: Micros = 60_000_000;

/// The most keys of one dimension a bucket keeps; the rest are `other`.
pub const TOP_KEYS: usize = 50;

/// The most tuples a bucket keeps; the smallest are summed into one tuple
/// whose every dimension is `other`.
pub const MAX_TUPLES: usize = 1000;

/// The value that stands for every key beyond the top ones. PostgreSQL's
/// names and texts cannot hold a NUL, so no real value is this.
pub const OTHER: &str = "\0other";

/// The fingerprint that stands for every query beyond the top ones.
pub const OTHER_QUERY: u64 = u64::MAX;

/// A key as people read it: `other` for [`OTHER`].
pub fn shown(key: &str) -> &str {
    if key == OTHER { "other" } else { key }
}

/// Which sessions a count is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Class {
    /// Active client sessions (and their parallel workers): DB load.
    #[default]
    Active = 0,
    /// Client sessions idle in a transaction.
    IdleInTransaction = 1,
    /// Background processes at work (not idle in their main loop).
    Background = 2,
}

impl Class {
    fn from_code(code: u32) -> Option<Class> {
        [Class::Active, Class::IdleInTransaction, Class::Background]
            .get(code as usize)
            .copied()
    }
}

/// What one session at one sample is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tuple {
    pub class: Class,
    /// wait_event_type, or "CPU" when the session does not wait.
    pub wait_type: ArcStr,
    /// wait_event; empty with "CPU".
    pub wait_event: ArcStr,
    /// The query's fingerprint (0: no text).
    pub query: u64,
    pub user: ArcStr,
    pub database: ArcStr,
    pub application: ArcStr,
    /// The client's address without its port; empty for a Unix socket.
    pub client: ArcStr,
    pub backend_type: ArcStr,
}

/// The dimensions load can be grouped and filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// `Type:Event`, or `CPU`.
    Wait,
    /// wait_event_type, or `CPU`.
    WaitType,
    /// The query fingerprint, as 16 hex digits.
    Query,
    User,
    Database,
    Application,
    /// The client host.
    Client,
    BackendType,
}

impl Dim {
    /// Every dimension, in the order requests name them.
    pub const ALL: [Dim; 8] = [
        Dim::Wait,
        Dim::WaitType,
        Dim::Query,
        Dim::User,
        Dim::Database,
        Dim::Application,
        Dim::Client,
        Dim::BackendType,
    ];

    /// Its name in requests.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Wait => "wait",
            Dim::WaitType => "wait_type",
            Dim::Query => "query",
            Dim::User => "user",
            Dim::Database => "database",
            Dim::Application => "application",
            Dim::Client => "client",
            Dim::BackendType => "backend_type",
        }
    }

    /// The dimension named `name`, if one is.
    pub fn parse(name: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The tuple's value in this dimension.
    pub fn of(self, t: &Tuple) -> String {
        self.value(t).name()
    }

    /// The tuple's value in this dimension, not yet named: cheap to hash,
    /// so that reads over many minutes name each value once.
    pub fn value(self, t: &Tuple) -> DimValue {
        match self {
            Dim::Wait => DimValue::Wait(t.wait_type.clone(), t.wait_event.clone()),
            Dim::WaitType => DimValue::Text(t.wait_type.clone()),
            Dim::Query => DimValue::Query(t.query),
            Dim::User => DimValue::Text(t.user.clone()),
            Dim::Database => DimValue::Text(t.database.clone()),
            Dim::Application => DimValue::Text(t.application.clone()),
            Dim::Client => DimValue::Text(t.client.clone()),
            Dim::BackendType => DimValue::Text(t.backend_type.clone()),
        }
    }
}

/// A tuple's value in one dimension (see [`Dim::value`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DimValue {
    Text(ArcStr),
    /// Its type and event.
    Wait(ArcStr, ArcStr),
    Query(u64),
}

impl DimValue {
    /// The value as answers give it.
    pub fn name(&self) -> String {
        match self {
            DimValue::Text(s) => shown(s).to_owned(),
            DimValue::Wait(kind, event) => wait_name(kind, event),
            DimValue::Query(q) => query_key(*q),
        }
    }
}

/// A wait as `Type:Event`, `CPU` or `other`.
pub fn wait_name(wait_type: &str, wait_event: &str) -> String {
    if wait_type == OTHER {
        "other".to_owned()
    } else if wait_event.is_empty() {
        wait_type.to_owned()
    } else {
        format!("{wait_type}:{wait_event}")
    }
}

/// A fingerprint as 16 hex digits, as `Session.fingerprint` gives it; `other`
/// for the queries beyond the top ones, and empty for no text.
pub fn query_key(fingerprint: u64) -> String {
    match fingerprint {
        0 => String::new(),
        OTHER_QUERY => "other".to_owned(),
        f => format!("{f:016x}"),
    }
}

/// One server's load over one minute: the minute's bucket, and the 10 s
/// buckets in it. The store keeps it as one row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MinuteLoad {
    /// The minute's bucket (its churn included).
    pub coarse: Bucket,
    /// Its 10 s buckets, oldest first (without churn, which is kept per
    /// minute).
    pub fine: Vec<Bucket>,
}

/// One server's counts over one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    /// The interval's first microsecond.
    pub start: Micros,
    /// Its length: [`FINE_US`] or [`COARSE_US`].
    pub len_us: Micros,
    /// The samples taken in it (the server up).
    pub samples: u32,
    /// The time those samples cover (samples × the sampling interval).
    pub covered_us: Micros,
    /// Each tuple with the samples it was seen in, summed.
    pub tuples: Vec<(Tuple, u32)>,
    /// Sessions started and ended in it.
    pub churn: Churn,
}

impl Bucket {
    /// An empty bucket of `len_us` that holds `at`.
    pub fn holding(at: Micros, len_us: Micros) -> Bucket {
        Bucket {
            start: at - at.rem_euclid(len_us),
            len_us,
            ..Bucket::default()
        }
    }

    /// Whether `at` falls in it.
    pub fn holds(&self, at: Micros) -> bool {
        self.start <= at && at < self.start + self.len_us
    }

    /// Adds `other`'s counts (a bucket within this one, or the same
    /// interval counted elsewhere).
    pub fn absorb(&mut self, other: &Bucket) {
        self.samples += other.samples;
        self.covered_us += other.covered_us;
        self.tuples.extend(other.tuples.iter().cloned());
        self.churn.absorb(&other.churn);
    }

    /// Sums equal tuples and keeps the size within [`TOP_KEYS`] keys per
    /// dimension and [`MAX_TUPLES`] tuples, in a stable order (largest
    /// first; ties: the smaller tuple). Each dimension's keys beyond its top
    /// ones, then each wait (type and event) and query beyond the top ones,
    /// become `other`; beyond [`MAX_TUPLES`], the smallest tuples are summed
    /// into one `other` tuple per class. (The work is done on interned
    /// strings: see [`intern`].)
    pub fn bound(&mut self) {
        let mut interner = intern::Interner::default();
        let ids: Vec<(intern::Ids, u32)> = self
            .tuples
            .iter()
            .map(|(t, n)| {
                let client = interner.id(&t.client);
                (interner.ids(t, client), *n)
            })
            .collect();
        let ranked = interner.ranked();
        let ids = ids
            .into_iter()
            .map(|(i, n)| (ranked.ranked(i), n))
            .collect();
        let bounded = ranked.bounded(ids);
        let strings = ranked.strings();
        self.tuples = bounded
            .iter()
            .map(|(ids, n)| (intern::tuple(&strings, ids), *n))
            .collect();
        self.churn.bound();
    }

    /// The sum of the counts of `class`, over the samples: the average.
    pub fn average(&self, class: Class) -> f64 {
        hours::MinuteTotals::of(self).average(class)
    }
}

#[cfg(test)]
pub(crate) mod tests;
