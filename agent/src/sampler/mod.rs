//! Sampling one target: one module per source.

mod activity;
mod run;

pub use activity::sample_activity;
pub use run::{SamplerStats, spawn};
