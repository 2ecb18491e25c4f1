//! Names kept for the process's life: databases, roles, applications, wait
//! events and backend types, as sessions name them.
//!
//! A session's strings are shared (`ArcStr`), and sharing one is a locked
//! change of its reference count: when a session is decoded, when a delta's
//! session takes the fields it left out from its base, and again when the
//! session is freed. The collector does this for every changed session of
//! every server, on strings that sit apart on the heap and are touched by
//! more than one thread. A name is one of a few per server, the same across
//! sessions and samples, so it is kept once, as a static `ArcStr`, whose
//! clones and drops change no count. Query texts and clients' addresses are
//! many and come and go, so they stay counted.
//!
//! Names kept are never freed, so they are bounded: [`MAX_BYTES`] in all,
//! and none longer than [`LONGEST`] bytes (PostgreSQL's names, and its
//! `application_name`, are at most 63). Past either bound a name is shared
//! and counted as any other string.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};

use arcstr::ArcStr;

/// The most bytes the names kept may take, their allocations included (as
/// [`OVERHEAD`] estimates them).
pub const MAX_BYTES: usize = 16 << 20;

/// The longest name kept, in bytes.
pub const LONGEST: usize = 63;

/// What each name kept takes besides its text, about: the `ArcStr`'s
/// header and the allocator's rounding, and the set's entry (its table
/// grows by doubling, so this is an estimate).
const OVERHEAD: usize = 48;

#[derive(Default)]
struct Kept {
    names: HashSet<ArcStr>,
    bytes: usize,
}

impl Kept {
    /// [`kept`], with at most `max_bytes` kept.
    fn keep(&mut self, text: &ArcStr, max_bytes: usize) -> ArcStr {
        if let Some(name) = self.names.get(text.as_str()) {
            return name.clone();
        }
        if self.bytes + text.len() + OVERHEAD > max_bytes {
            return text.clone();
        }
        text.leak();
        self.bytes += text.len() + OVERHEAD;
        self.names.insert(text.clone());
        text.clone()
    }
}

static KEPT: LazyLock<Mutex<Kept>> = LazyLock::new(Mutex::default);

/// `text` as a name kept for the process's life: the one kept with the same
/// text, or `text` itself, kept from now on; or, past the bounds, `text` as
/// it is.
pub fn kept(text: &ArcStr) -> ArcStr {
    if ArcStr::is_static(text) || text.len() > LONGEST {
        return text.clone();
    }
    KEPT.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .keep(text, MAX_BYTES)
}

/// How many names are kept, and the bytes they take.
pub fn held() -> (usize, usize) {
    let kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    (kept.names.len(), kept.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_kept_once_and_its_copies_count_nothing() {
        let a = ArcStr::from("names-test-database");
        let b = ArcStr::from(String::from("names-test-database"));
        assert!(!ArcStr::is_static(&a) && !ArcStr::ptr_eq(&a, &b));
        let first = kept(&a);
        assert!(ArcStr::is_static(&first) && ArcStr::ptr_eq(&first, &a));
        // The same text in another allocation gives the one kept.
        let second = kept(&b);
        assert!(ArcStr::ptr_eq(&second, &first));
        assert!(!ArcStr::is_static(&b));
        assert_eq!(second, "names-test-database");
    }

    #[test]
    fn past_its_bytes_a_name_stays_counted() {
        // A set of its own, so that the process's stays as it is.
        let mut kept = Kept::default();
        let max = 2 * (OVERHEAD + 8);
        let [a, b, c] = ["bound-a1", "bound-b2", "bound-c3"].map(ArcStr::from);
        assert!(ArcStr::is_static(&kept.keep(&a, max)));
        assert!(ArcStr::is_static(&kept.keep(&b, max)));
        let past = kept.keep(&c, max);
        assert!(!ArcStr::is_static(&past) && ArcStr::ptr_eq(&past, &c));
        assert_eq!((kept.names.len(), kept.bytes), (2, max));
        // A name kept before the bound was reached is still given.
        let again = ArcStr::from(String::from("bound-a1"));
        assert!(ArcStr::ptr_eq(&kept.keep(&again, max), &a));
    }

    #[test]
    fn a_text_longer_than_a_name_stays_counted() {
        let longest = ArcStr::from("n".repeat(LONGEST));
        assert!(ArcStr::is_static(&kept(&longest)));
        let query = ArcStr::from("x".repeat(LONGEST + 1));
        let same = kept(&query);
        assert!(!ArcStr::is_static(&same));
        assert!(ArcStr::ptr_eq(&same, &query));
        assert_eq!(ArcStr::strong_count(&query), Some(2));
    }
}
