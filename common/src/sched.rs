//! A higher priority for the threads that answer people.
//!
//! On a collector whose cores its agents' streams keep busy, a read waits
//! for the kernel to run the thread that answers it, behind threads that
//! apply batches. A lower nice value for that thread alone puts it first;
//! it uses little CPU, so the others lose little.

/// Lowers the calling thread's nice value by `by` (to at most -20) and
/// returns the new one. Only a thread's own: on Linux each thread has its
/// own nice value. Going below the process's needs CAP_SYS_NICE, or an
/// RLIMIT_NICE that allows it (systemd's `LimitNICE=`); without, the error
/// is `PermissionDenied` and nothing changes.
pub fn raise_thread_priority(by: i32) -> std::io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        let thread = Some(rustix::thread::gettid());
        let now = rustix::process::getpriority_process(thread)?;
        let wanted = (now - by).max(-20);
        rustix::process::setpriority_process(thread, wanted)?;
        Ok(wanted)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = by;
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn only_the_calling_thread_is_raised_and_where_it_may_not_it_is_told() {
        let before = nice_of_this_thread();
        let (raised, after) = std::thread::spawn(|| {
            let raised = raise_thread_priority(5);
            (raised, nice_of_this_thread())
        })
        .join()
        .unwrap();
        match raised {
            Ok(nice) => {
                assert_eq!(nice, (before - 5).max(-20));
                assert_eq!(after, nice);
            }
            Err(e) => {
                // Root may always (CI runs as root).
                assert!(!rustix::process::geteuid().is_root(), "{e}");
                assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
                assert_eq!(after, before);
            }
        }
        assert_eq!(nice_of_this_thread(), before);
        assert_eq!(
            std::thread::spawn(nice_of_this_thread).join().unwrap(),
            before
        );
    }
}
