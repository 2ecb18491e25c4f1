//! The sampling tick, waking the agent once per tick.
//!
//! tokio's timer wheel wakes a sleeper of more than 64 ms twice: once when the
//! coarse slot that holds it comes due, and again after moving it to the fine
//! wheel (at a 1 s interval: 946 ms, then 48 ms). On a virtual machine a wakeup
//! is a good part of what an agent costs at all (BENCHMARKS.md, "The cost of
//! watching a server"), so on Linux the tick is a timerfd, which the kernel
//! fires once at the tick's instant. Elsewhere, or where a timerfd cannot be
//! made (a sandbox that forbids it), it is tokio's interval.
//!
//! Either way the first tick is at once, and a tick that a slow sample missed
//! is skipped rather than made up: the next one keeps the schedule.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tracing::warn;

/// A periodic tick.
pub struct Ticker {
    /// For the fallback to tokio's timer, should the timerfd fail.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    period: Duration,
    clock: Clock,
}

/// What a [`Ticker`] waits on.
enum Clock {
    #[cfg(target_os = "linux")]
    Timerfd(timerfd::Timer),
    Tokio(Interval),
}

impl Ticker {
    pub fn new(period: Duration) -> Ticker {
        #[cfg(target_os = "linux")]
        match timerfd::Timer::new(period) {
            Ok(timer) => {
                return Ticker {
                    period,
                    clock: Clock::Timerfd(timer),
                };
            }
            Err(e) => {
                warn!(error = %e, "No timerfd for the sampling tick; using tokio's timer, which wakes the agent twice a tick.")
            }
        }
        Ticker {
            period,
            clock: Clock::Tokio(tokio_interval(period)),
        }
    }

    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        loop {
            match &mut self.clock {
                #[cfg(target_os = "linux")]
                Clock::Timerfd(timer) => {
                    let Err(e) = timer.wait().await else {
                        return;
                    };
                    warn!(error = %e, "The sampling tick's timerfd failed; using tokio's timer from now on.");
                    // Its first tick is at once, as this one would have been.
                    self.clock = Clock::Tokio(tokio_interval(self.period));
                }
                Clock::Tokio(interval) => {
                    interval.tick().await;
                    return;
                }
            }
        }
    }
}

fn tokio_interval(period: Duration) -> Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    interval
}

#[cfg(target_os = "linux")]
mod timerfd {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// A periodic CLOCK_MONOTONIC timerfd, armed to fire at once and then
    /// every period.
    pub struct Timer(AsyncFd<OwnedFd>);

    impl Timer {
        pub fn new(period: Duration) -> io::Result<Timer> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            let spec = Itimerspec {
                it_interval: timespec(period),
                // Zero would disarm it: a nanosecond is at once.
                it_value: Timespec {
                    tv_sec: 0,
                    tv_nsec: 1,
                },
            };
            timerfd_settime(&fd, TimerfdTimerFlags::empty(), &spec)?;
            // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays
            // open, and the same, until the AsyncFd is dropped (which
            // deregisters it before closing it).
            #[allow(unsafe_code)]
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
            Ok(Timer(fd))
        }

        /// Waits until the timer has fired at least once since the last wait
        /// (the count of expirations is read and dropped: missed ticks are
        /// skipped).
        pub async fn wait(&self) -> io::Result<()> {
            loop {
                let mut ready = self.0.readable().await?;
                let mut expirations = [0u8; 8];
                match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    // Not fired yet: readiness is cleared, wait again.
                    Err(_would_block) => continue,
                }
            }
        }
    }

    fn timespec(d: Duration) -> Timespec {
        Timespec {
            tv_sec: d.as_secs() as _,
            tv_nsec: d.subsec_nanos() as _,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn ticks_at_once_then_every_period_and_skips_what_it_missed() {
        let period = Duration::from_millis(100);
        let mut ticker = Ticker::new(period);
        #[cfg(target_os = "linux")]
        assert!(
            matches!(ticker.clock, Clock::Timerfd(_)),
            "a timerfd on Linux"
        );
        let t0 = Instant::now();
        ticker.tick().await;
        assert!(t0.elapsed() < period / 2, "the first tick is at once");
        ticker.tick().await;
        let second = t0.elapsed();
        assert!(
            second >= period - Duration::from_millis(2) && second < Duration::from_secs(2),
            "the second tick a period later: {second:?}"
        );
        // Miss three ticks: the next comes on the schedule, not three at once.
        std::thread::sleep(period * 3 + period / 2);
        ticker.tick().await;
        let late = Instant::now();
        ticker.tick().await;
        let gap = late.elapsed();
        assert!(
            gap >= period / 4,
            "missed ticks are skipped, not made up: the tick after came {gap:?} later"
        );
    }
}
