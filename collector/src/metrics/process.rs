//! The collector's own process, as a collector of a large fleet is watched:
//! Prometheus' usual `process_*` families (CPU, memory, open files and their
//! limit), and its CPU by thread, each thread named for its job.
//!
//! The CPU by thread says which part sets the collector's limit. The
//! aggregator is one thread: once it takes about a whole core, the collector
//! holds no more servers however many cores it has (README, "Sizing a
//! collector"). Read from Linux's `/proc`; elsewhere these families are left
//! out.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Out;

/// The jobs of the collector's threads, as their names say, and the label
/// each is given. Linux keeps 15 bytes of a thread's name.
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

/// The CPU each job's threads took, kept from one scrape to the next so that
/// it only grows: threads come and go (a reader's blocking threads, the
/// dictionary's training), and a thread gone keeps what it took up to the
/// scrape before it ended.
#[derive(Debug, Default)]
pub struct ThreadCpu {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Each live thread by id: its job and its CPU at the last scrape, in ns.
    threads: HashMap<u32, (usize, u64)>,
    /// Each job's CPU so far, in ns.
    totals: [u64; OTHER + 1],
}

impl Seen {
    /// Takes the threads as read now (id, name, CPU in ns); each job's CPU.
    fn update(&mut self, now: impl IntoIterator<Item = (u32, String, u64)>) -> [u64; OTHER + 1] {
        let mut live = HashMap::with_capacity(self.threads.len());
        for (tid, name, ns) in now {
            let job = job(&name);
            // A thread new since the last scrape adds its whole CPU; so does
            // one whose id a new thread of another job took.
            let before = match self.threads.get(&tid) {
                Some(&(was, ns_before)) if was == job => ns_before.min(ns),
                _ => 0,
            };
            self.totals[job] += ns - before;
            live.insert(tid, (job, ns));
        }
        self.threads = live;
        self.totals
    }
}

/// The job of a thread named `name`.
fn job(name: &str) -> usize {
    JOBS.iter()
        .position(|(prefix, _)| name.starts_with(prefix))
        .unwrap_or(OTHER)
}

impl ThreadCpu {
    /// Adds the process's families to `out`, if this system has `/proc`.
    pub(super) fn render(&self, out: &mut Out) {
        let Ok(threads) = read_threads() else {
            return;
        };
        let totals = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .update(threads);
        out.family(
            "pgfleet_collector_thread_cpu_seconds_total",
            "counter",
            "CPU the collector's threads took, by job: ingest (the agents' streams, --ingest-threads), aggregator (the live fleet, one thread), store (the history's writer, one thread), reads (the HTTP port and --query-listen), dictionary (training the frames' dictionary), other. The aggregator and the store's writer are one thread each: when either's rate nears 1, the collector holds no more servers however many cores it has, and a fleet that grows needs another collector sharing a PostgreSQL store.",
        );
        let labels = JOBS.iter().map(|(_, label)| *label).chain(["other"]);
        for (label, ns) in labels.zip(totals) {
            out.sample(
                "pgfleet_collector_thread_cpu_seconds_total",
                &[("thread", label)],
                ns as f64 / 1e9,
            );
        }
        if let Some(seconds) = process_cpu_seconds() {
            out.family(
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            );
            out.sample("process_cpu_seconds_total", &[], seconds);
        }
        if let Some(bytes) = resident_bytes() {
            out.family(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes. The collector keeps the memory it frees for reuse, so this stays at its peak, which comes at each minute's end (README, \"Sizing a collector\").",
            );
            out.sample("process_resident_memory_bytes", &[], bytes as f64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            out.family(
                "process_open_fds",
                "gauge",
                "Number of open file descriptors: one for each agent's connection, and a few for the store and the ports.",
            );
            out.sample("process_open_fds", &[], fds.count() as f64);
        }
        if let Some(max) = crate::listen::open_files_limit() {
            out.family(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors. Past it, agents' connections are refused: raise LimitNOFILE= in the collector's systemd unit, or ulimit -n.",
            );
            out.sample("process_max_fds", &[], max as f64);
        }
    }
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
        // A thread that ended since the directory was listed is passed over.
        let (Ok(name), Ok(schedstat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = schedstat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        threads.push((tid, name.trim_end().to_owned(), ns));
    }
    Ok(threads)
}

/// The process's user and system CPU, every thread's that ever ran.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the name, which is in parentheses and may hold any
    // character: the 14th and 15th of the line are the 12th and 13th here.
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// The process's resident memory, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread(tid: u32, name: &str, ms: u64) -> (u32, String, u64) {
        (tid, name.to_owned(), ms * 1_000_000)
    }

    #[test]
    fn each_job_s_cpu_only_grows_as_threads_come_and_go() {
        let mut seen = Seen::default();
        let ms = |totals: [u64; OTHER + 1]| totals.map(|ns| ns / 1_000_000);
        let first = seen.update([
            thread(1, "pgfleet-collect", 5),
            thread(2, "pgfleet-ingest", 100),
            thread(3, "pgfleet-ingest", 50),
            thread(4, "pgfleet-aggrega", 200),
            thread(5, "pgfleet-reads", 7),
        ]);
        assert_eq!(ms(first), [150, 200, 0, 7, 0, 5]);
        // A reader's blocking thread and the dictionary's come, and one
        // ingest worker ends: what it took stays counted.
        let second = seen.update([
            thread(1, "pgfleet-collect", 5),
            thread(2, "pgfleet-ingest", 130),
            thread(4, "pgfleet-aggrega", 260),
            thread(5, "pgfleet-reads", 9),
            thread(6, "pgfleet-reads", 40),
            thread(7, "pgfleet-dict", 300),
        ]);
        assert_eq!(ms(second), [180, 260, 0, 49, 300, 5]);
        // The dictionary's thread ends and a thread of another job takes its
        // id: its CPU is its own, not a change of the ended thread's.
        let third = seen.update([
            thread(1, "pgfleet-collect", 6),
            thread(2, "pgfleet-ingest", 130),
            thread(4, "pgfleet-aggrega", 260),
            thread(5, "pgfleet-reads", 9),
            thread(7, "pgfleet-reads", 3),
        ]);
        assert_eq!(ms(third), [180, 260, 0, 52, 300, 6]);
        for (a, b) in first.iter().zip(&second).chain(second.iter().zip(&third)) {
            assert!(b >= a);
        }
    }

    #[test]
    fn threads_are_told_apart_by_the_names_they_are_given() {
        assert_eq!(job("pgfleet-aggrega"), 1);
        assert_eq!(job("pgfleet-store"), 2);
        assert_eq!(job("tokio-rt-worker"), OTHER);
        assert_eq!(job("pgfleet-collect"), OTHER);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read_from_proc() {
        let cpu = ThreadCpu::default();
        // A thread of a job, alive while the families are read, that has
        // taken some CPU.
        let (started, stop) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("pgfleet-store".into())
                .spawn_scoped(s, || {
                    let t = std::time::Instant::now();
                    while t.elapsed() < std::time::Duration::from_millis(20) {
                        std::hint::black_box(0);
                    }
                    started.wait();
                    stop.wait();
                })
                .unwrap();
            started.wait();
            let mut out = Out {
                text: String::new(),
            };
            cpu.render(&mut out);
            stop.wait();
            let value = |series: &str| -> f64 {
                let line = out
                    .text
                    .lines()
                    .find(|l| l.starts_with(series))
                    .unwrap_or_else(|| panic!("no {series} in {}", out.text));
                line.rsplit(' ').next().unwrap().parse().unwrap()
            };
            let store = value("pgfleet_collector_thread_cpu_seconds_total{thread=\"store\"}");
            assert!(store >= 0.01, "{store}");
            // The kernel counts the process's CPU in ticks (10 ms, as a
            // rule), a thread's to the nanosecond.
            let process = value("process_cpu_seconds_total");
            assert!(
                process > 0.0 && process + 0.05 >= store,
                "{process} {store}"
            );
            assert!(value("process_resident_memory_bytes") > 1e6);
            let fds = value("process_open_fds");
            assert!(fds >= 3.0 && fds <= value("process_max_fds"));
        });
    }
}
