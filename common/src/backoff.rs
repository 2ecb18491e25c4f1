//! Capped exponential backoff with jitter, for every retry a pgfleet binary makes.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Delays that double from `base` up to `cap`, each drawn at random from the upper
/// half of its step so that a fleet of agents does not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    /// Draws made by [`Backoff::spread`].
    draws: u64,
    random: RandomState,
}

impl Backoff {
    /// A backoff starting at `base` and never longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
            draws: 0,
            random: RandomState::new(),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let fraction = (self.random.hash_one(self.attempt) % 1024) as u32;
        step / 2 + (step / 2) * fraction / 1024
    }

    /// A delay drawn at random from the whole of `window`, for the first
    /// attempt after something every client sees at once (a collector that
    /// restarts drops every agent's stream at the same instant): a fleet then
    /// comes back spread over the window rather than in one burst. It does
    /// not move the backoff on.
    pub fn spread(&mut self, window: Duration) -> Duration {
        self.draws = self.draws.wrapping_add(1);
        let fraction = self.random.hash_one((u32::MAX, self.draws)) % 1_000_000;
        window.mul_f64(fraction as f64 / 1e6)
    }

    /// Starts again from `base` after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        for d in &delays[5..] {
            assert!(
                *d >= Duration::from_secs(1) && *d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_spread_covers_its_window() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let window = Duration::from_secs(5);
        let draws: Vec<Duration> = (0..400).map(|_| b.spread(window)).collect();
        assert!(draws.iter().all(|d| *d < window));
        // Each second of the window gets some of 400 draws.
        for second in 0..5 {
            let n = draws.iter().filter(|d| d.as_secs() == second).count();
            assert!((30..=130).contains(&n), "{n} draws in second {second}");
        }
        // And the backoff did not move.
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn two_agents_do_not_retry_in_lockstep() {
        let mut a = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let differ = (0..8).any(|_| a.next_delay() != b.next_delay());
        assert!(differ);
    }
}
