//! Favouring the threads that answer people.
//!
//! On a collector whose cores its agents' streams keep busy, a read waits
//! for the kernel to run the thread that answers it, behind threads that
//! apply batches. Two things put that thread first:
//! - a lower nice value, for that thread alone: it uses little CPU, so the
//!   others lose little. Going below the process's own needs CAP_SYS_NICE or
//!   an RLIMIT_NICE that allows it (systemd's `LimitNICE=`).
//! - a shorter time slice (Linux 6.12 and later, no privilege needed): the
//!   fair scheduler (EEVDF) then lets the thread run as soon as it wakes,
//!   in place of one that is in the middle of a longer slice, rather than
//!   after it. It gets no more CPU for it, only sooner, in shorter turns.

use std::time::Duration;

/// What [`favour_thread`] obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Favoured {
    /// The thread's nice value now.
    pub nice: i32,
    /// Whether it is lower than before (otherwise the system refused).
    pub raised: bool,
}

/// Gives the calling thread, and only it, a nice value `steps` lower (to at
/// most -20) and a time slice of `slice` (the kernel holds it to 0.1–100 ms,
/// and kernels before 6.12 keep their own). Where the lower nice value is
/// refused, the slice is still set, and `raised` is false. Threads it starts
/// later do not inherit the slice, nor a nice value below 0
/// (`SCHED_FLAG_RESET_ON_FORK`): they start with the default slice, at nice
/// 0 where this one went below it.
pub fn favour_thread(steps: i32, slice: Duration) -> std::io::Result<Favoured> {
    #[cfg(target_os = "linux")]
    {
        linux::favour_thread(steps, slice)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (steps, slice);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Whether this process has CAP_SYS_NICE (bit 23 of its effective
/// capabilities in `/proc/self/status`), with which [`favour_thread`] always
/// lowers the nice value: root, unless in a container that dropped it.
pub fn may_lower_nice() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 23) != 0)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
mod linux {
    use std::io::{Error, ErrorKind};
    use std::time::Duration;

    use super::Favoured;

    /// The calling thread's nice value (getpriority's "process" is the
    /// calling thread on Linux).
    pub(super) fn nice() -> std::io::Result<i32> {
        // SAFETY: errno is the calling thread's; getpriority reads a value,
        // and errno tells its -1 from an error.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, 0)
        };
        let error = Error::last_os_error();
        if nice == -1 && error.raw_os_error() != Some(0) {
            return Err(error);
        }
        Ok(nice)
    }

    /// sched_setattr for the calling thread: the normal policy, `nice`, and
    /// `slice` as its runtime.
    fn set(nice: i32, slice: Duration) -> std::io::Result<()> {
        let attr = libc::sched_attr {
            size: std::mem::size_of::<libc::sched_attr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            // Threads this one starts (tokio's blocking threads, for long
            // reads) begin again at nice 0 and the default slice.
            sched_flags: libc::SCHED_FLAG_RESET_ON_FORK as u64,
            sched_nice: nice,
            sched_priority: 0,
            sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
            sched_deadline: 0,
            sched_period: 0,
        };
        // SAFETY: `attr` is a valid sched_attr of the size it states, which
        // the kernel reads during the call; pid 0 is the calling thread.
        let done = unsafe {
            libc::syscall(
                libc::SYS_sched_setattr,
                0,
                &attr as *const libc::sched_attr,
                0,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(Error::last_os_error())
        }
    }

    pub(super) fn favour_thread(steps: i32, slice: Duration) -> std::io::Result<Favoured> {
        let now = nice()?;
        let wanted = (now - steps).max(-20);
        match set(wanted, slice) {
            Ok(()) => Ok(Favoured {
                nice: wanted,
                raised: wanted < now,
            }),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                set(now, slice)?;
                Ok(Favoured {
                    nice: now,
                    raised: false,
                })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The calling thread's time slice (`/proc/thread-self/sched`, in ns).
    fn slice_of_this_thread() -> Option<Duration> {
        let text = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("se.slice"))?;
        let ns: u64 = line.split(':').nth(1)?.trim().parse().ok()?;
        Some(Duration::from_nanos(ns))
    }

    /// Whether this kernel (6.12 or later) takes a slice from sched_setattr.
    fn kernel_has_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (6, 12)
    }

    #[test]
    fn only_the_calling_thread_is_favoured_and_without_privilege_it_gets_the_slice_alone() {
        let before = (linux::nice().unwrap(), slice_of_this_thread());
        let (favoured, nice, slice, child) = std::thread::spawn(|| {
            let favoured = favour_thread(5, Duration::from_micros(200)).unwrap();
            // A thread it starts begins again.
            let child = std::thread::spawn(|| (linux::nice().unwrap(), slice_of_this_thread()));
            let child = child.join().unwrap();
            (
                favoured,
                linux::nice().unwrap(),
                slice_of_this_thread(),
                child,
            )
        })
        .join()
        .unwrap();
        assert_eq!(favoured.nice, nice);
        if may_lower_nice() {
            // CI runs as root, which may.
            assert!(favoured.raised);
            assert_eq!(nice, (before.0 - 5).max(-20));
        } else if !favoured.raised {
            assert_eq!(nice, before.0);
        }
        if kernel_has_slices() && before.1.is_some() {
            assert_eq!(slice, Some(Duration::from_micros(200)));
            assert_ne!(slice, before.1);
        }
        assert_eq!(child, (favoured.nice.max(0), before.1));
        // This thread, and another, keep their own.
        assert_eq!((linux::nice().unwrap(), slice_of_this_thread()), before);
        let other = std::thread::spawn(|| (linux::nice().unwrap(), slice_of_this_thread()));
        assert_eq!(other.join().unwrap(), before);
    }
}
