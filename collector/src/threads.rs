//! The collector's threads, each named for its job, and the CPU each job's
//! threads took: for `/metrics` (`pgfleet_collector_thread_cpu_seconds_total`),
//! read from Linux's `/proc`.
//!
//! A collector's limit is set by which thread is busiest: the aggregator and
//! the store's writer are one thread each, so once either takes about a
//! whole core the collector holds no more servers however many cores it has
//! spare (README, "Sizing a collector").

use std::collections::HashMap;
use std::path::Path;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

/// The jobs of the collector's threads, as their names say, and the label
/// each is given. Linux keeps 15 bytes of a thread's name, and a thread
/// started without a name takes the name of the thread that started it.
const JOBS: [(&str, &str); 5] = [
    ("pgfleet-ingest", "ingest"),
    ("pgfleet-aggrega", "aggregator"),
    ("pgfleet-store", "store"),
    ("pgfleet-reads", "reads"),
    ("pgfleet-dict", "dictionary"),
];

/// The label of the threads of no job above: the main thread, and any
/// thread of the libraries'.
const OTHER: usize = JOBS.len();

/// The CPU each job's threads took, kept for the process's life so that it
/// only grows: threads come and go (a reader's blocking threads, the
/// dictionary's training), and one that ends adds what it took since it was
/// last counted ([`thread_ends`]).
static SEEN: LazyLock<Mutex<Seen>> = LazyLock::new(Mutex::default);

#[derive(Debug, Default)]
struct Seen {
    /// Each live thread by id: its job and its CPU as last counted, in ns.
    threads: HashMap<u32, (usize, u64)>,
    /// Each job's CPU so far, in ns.
    totals: [u64; OTHER + 1],
}

impl Seen {
    /// Takes the threads as read now (id, name, CPU in ns); each job's CPU.
    fn update(&mut self, now: impl IntoIterator<Item = (u32, String, u64)>) -> [u64; OTHER + 1] {
        let mut before = std::mem::take(&mut self.threads);
        let mut live = HashMap::with_capacity(before.len());
        for (tid, name, ns) in now {
            let job = job(&name);
            self.add(before.remove(&tid), job, ns);
            live.insert(tid, (job, ns));
        }
        self.threads = live;
        self.totals
    }

    /// Thread `tid` (named `name`) ends, having taken `ns`. It stays among
    /// the threads counted, as its end counted it: it may still be listed at
    /// a scrape that comes before it is gone.
    fn ends(&mut self, tid: u32, name: &str, ns: u64) {
        let job = job(name);
        let before = self.threads.insert(tid, (job, ns));
        self.add(before, job, ns);
    }

    /// Counts a thread of `job` at `ns`, counted before as `before`.
    fn add(&mut self, before: Option<(usize, u64)>, job: usize, ns: u64) {
        // A thread new since it was last counted adds its whole CPU; so does
        // one that took the id of a thread that ended (of another job, or
        // with less CPU so far).
        let counted = match before {
            Some((was, counted)) if was == job && counted <= ns => counted,
            _ => 0,
        };
        self.totals[job] += ns - counted;
    }
}

/// The job of a thread named `name`.
fn job(name: &str) -> usize {
    JOBS.iter()
        .position(|(prefix, _)| name.starts_with(prefix))
        .unwrap_or(OTHER)
}

fn seen() -> MutexGuard<'static, Seen> {
    SEEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts the calling thread's CPU as it ends, so that what it took since
/// the last scrape is not lost: given to the runtimes' `on_thread_stop`, and
/// called at the end of the threads the collector starts for a while.
pub fn thread_ends() {
    // `/proc/thread-self` links to `<pid>/task/<tid>`.
    let task = Path::new("/proc/thread-self");
    let tid = std::fs::read_link(task)
        .ok()
        .and_then(|link| link.file_name()?.to_str()?.parse().ok());
    if let (Some(tid), Some((name, ns))) = (tid, read_thread(task)) {
        seen().ends(tid, &name, ns);
    }
}

/// Each job's label and the CPU its threads took, in ns (the threads alive
/// now read from `/proc`, those that ended as they counted themselves); None
/// where there is no `/proc`.
pub fn cpu_by_job() -> Option<[(&'static str, u64); OTHER + 1]> {
    // Read under the lock, so that scrapes at once count in turn.
    let mut seen = seen();
    let totals = seen.update(read_threads().ok()?);
    Some(std::array::from_fn(|i| {
        (JOBS.get(i).map_or("other", |(_, label)| *label), totals[i])
    }))
}

/// Every live thread of this process: its id, name and CPU in ns.
fn read_threads() -> std::io::Result<Vec<(u32, String, u64)>> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?.path();
        let Some(tid) = task
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        // A thread that ended since the directory was listed is passed over
        // (it counted itself as it ended).
        if let Some((name, ns)) = read_thread(&task) {
            threads.push((tid, name, ns));
        }
    }
    Ok(threads)
}

/// A thread's name and CPU in ns, from its directory under `/proc`.
fn read_thread(task: &Path) -> Option<(String, u64)> {
    let name = std::fs::read_to_string(task.join("comm")).ok()?;
    Some((name.trim_end().to_owned(), thread_ns(task)?))
}

/// A thread's CPU in ns, from its directory under `/proc`: to the
/// nanosecond where the kernel keeps scheduler statistics, else in ticks.
fn thread_ns(task: &Path) -> Option<u64> {
    if let Ok(schedstat) = std::fs::read_to_string(task.join("schedstat")) {
        return schedstat.split_whitespace().next()?.parse().ok();
    }
    let ticks = user_and_system(&std::fs::read_to_string(task.join("stat")).ok()?)?;
    Some(ticks * 1_000_000_000 / rustix::param::clock_ticks_per_second())
}

/// The user and system CPU of a `stat` file of `/proc`, in ticks.
pub(crate) fn user_and_system(stat: &str) -> Option<u64> {
    // The fields after the name, which is in parentheses and may hold any
    // character: the 14th and 15th of the line are the 12th and 13th here.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(tid: u32, name: &str, ms: u64) -> (u32, String, u64) {
        (tid, name.to_owned(), ms * 1_000_000)
    }

    fn ms(totals: [u64; OTHER + 1]) -> [u64; OTHER + 1] {
        totals.map(|ns| ns / 1_000_000)
    }

    #[test]
    fn each_job_s_cpu_only_grows_as_threads_come_and_go() {
        let mut seen = Seen::default();
        let first = seen.update([
            thread(1, "pgfleet-collect", 5),
            thread(2, "pgfleet-ingest", 100),
            thread(3, "pgfleet-ingest", 50),
            thread(4, "pgfleet-aggrega", 200),
            thread(5, "pgfleet-reads", 7),
        ]);
        assert_eq!(ms(first), [150, 200, 0, 7, 0, 5]);
        // An ingest worker ends after 20 ms more, and says so; a reader's
        // blocking thread and the dictionary's start.
        seen.ends(3, "pgfleet-ingest", 70_000_000);
        let second = seen.update([
            thread(1, "pgfleet-collect", 5),
            thread(2, "pgfleet-ingest", 130),
            thread(4, "pgfleet-aggrega", 260),
            thread(5, "pgfleet-reads", 9),
            thread(6, "pgfleet-reads", 40),
            thread(7, "pgfleet-dict", 300),
        ]);
        assert_eq!(ms(second), [200, 260, 0, 49, 300, 5]);
        // The dictionary's thread ends between scrapes and is counted whole
        // to its end; a thread of another job takes its id, and one of the
        // same job takes the id of a reader that ended unheard, with less
        // CPU: each counts as new.
        seen.ends(7, "pgfleet-dict", 450_000_000);
        let third = seen.update([
            thread(1, "pgfleet-collect", 6),
            thread(2, "pgfleet-ingest", 130),
            thread(4, "pgfleet-aggrega", 260),
            thread(5, "pgfleet-reads", 9),
            thread(6, "pgfleet-reads", 4),
            thread(7, "pgfleet-reads", 3),
        ]);
        assert_eq!(ms(third), [200, 260, 0, 56, 450, 6]);
        // A thread that ends without having been scraped counts whole; one
        // that counted itself as it ended and is still listed is not counted
        // again.
        seen.ends(8, "pgfleet-reads", 11_000_000);
        seen.ends(9, "pgfleet-ingest", 5_000_000);
        let fourth = seen.update([
            thread(1, "pgfleet-collect", 6),
            thread(9, "pgfleet-ingest", 5),
        ]);
        assert_eq!(ms(fourth), [205, 260, 0, 67, 450, 6]);
        for pair in [first, second, third, fourth].windows(2) {
            assert!(pair[0].iter().zip(&pair[1]).all(|(a, b)| b >= a));
        }
    }

    #[test]
    fn threads_are_told_apart_by_the_names_they_are_given() {
        assert_eq!(job("pgfleet-aggrega"), 1);
        assert_eq!(job("pgfleet-store"), 2);
        assert_eq!(job("tokio-rt-worker"), OTHER);
        assert_eq!(job("pgfleet-collect"), OTHER);
    }

    #[test]
    fn a_stat_line_gives_its_user_and_system_ticks() {
        // The name may hold spaces and parentheses.
        let stat = "41 (a (b) c) S 1 41 41 0 -1 4194560 150 0 0 0 17 4 0 0 20 0 1 0 99 0 0";
        assert_eq!(user_and_system(stat), Some(21));
        assert_eq!(user_and_system("41 (cut"), None);
        assert_eq!(user_and_system("41 (x) S 1"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_ended_thread_keeps_its_cpu() {
        let dictionary = || cpu_by_job().expect("this system has /proc")[4];
        assert_eq!(dictionary().0, "dictionary");
        let before = dictionary().1;
        // A thread of a job takes 20 ms of CPU and ends between scrapes,
        // counting itself as the collector's do.
        std::thread::Builder::new()
            .name("pgfleet-dict".into())
            .spawn(|| {
                let task = Path::new("/proc/thread-self");
                while thread_ns(task).expect("its CPU is read") < 20_000_000 {
                    std::hint::black_box(0);
                }
                thread_ends();
            })
            .unwrap()
            .join()
            .unwrap();
        // Other tests of this process may run such threads at once.
        let after = dictionary().1;
        assert!(after - before >= 20_000_000, "{before} {after}");
    }
}
