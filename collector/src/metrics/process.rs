//! The collector's own process, as a collector of a large fleet is watched:
//! Prometheus' usual `process_*` families (CPU, memory, open files and their
//! limit), and its CPU by the job of its threads ([`crate::threads`]). Read
//! from Linux's `/proc`; elsewhere these families are left out.

use super::Out;
use crate::threads;

/// The process's families, each where this system has what it is read from
/// (Linux's `/proc`).
pub(super) fn render() -> String {
    let mut out = Out {
        text: String::new(),
    };
    if let Some(jobs) = threads::cpu_by_job() {
        out.family(
            "pgfleet_collector_thread_cpu_seconds_total",
            "counter",
            "CPU the collector's threads took, by job: ingest (the agents' streams, --ingest-threads), aggregator (the live fleet, one thread), store (the history's writer, one thread), reads (the HTTP port and --query-listen), dictionary (training the frames' dictionary), other. The aggregator and the store's writer are one thread each: when either's rate nears 1, the collector holds no more servers however many cores it has spare, and a fleet that grows needs another collector sharing a PostgreSQL store.",
        );
        for (label, ns) in jobs {
            out.sample(
                "pgfleet_collector_thread_cpu_seconds_total",
                &[("thread", label)],
                ns as f64 / 1e9,
            );
        }
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
            "Maximum number of open file descriptors. Past it, new agents wait until one is free: give at least twice the agents (LimitNOFILE= in the collector's systemd unit, or ulimit -n).",
        );
        out.sample("process_max_fds", &[], max as f64);
    }
    out.text
}

/// The process's user and system CPU, every thread's that ever ran.
fn process_cpu_seconds() -> Option<f64> {
    let ticks = threads::user_and_system(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_from_proc() {
        // The kernel counts the process's CPU in ticks (10 ms, as a rule):
        // a test run alone may not have taken one yet.
        while process_cpu_seconds() == Some(0.0) {
            std::hint::black_box(0);
        }
        let text = render();
        let value = |series: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(series))
                .unwrap_or_else(|| panic!("no {series} in {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        for job in [
            "ingest",
            "aggregator",
            "store",
            "reads",
            "dictionary",
            "other",
        ] {
            let series = format!("pgfleet_collector_thread_cpu_seconds_total{{thread=\"{job}\"}}");
            assert!(value(&series) >= 0.0);
        }
        assert!(value("pgfleet_collector_thread_cpu_seconds_total{thread=\"other\"}") > 0.0);
        assert!(value("process_cpu_seconds_total") > 0.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        let fds = value("process_open_fds");
        assert!(fds >= 3.0 && fds <= value("process_max_fds"));
    }
}
