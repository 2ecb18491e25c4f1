//! Sampling one target: one module per source, and the loop that runs them.

pub mod activity;
mod array;
pub mod database;
mod names;
pub mod pgbouncer;
pub mod query_text;
mod run;
pub mod statements;
mod tick;

pub use query_text::QueryText;
pub use run::{SamplerStats, TargetSampler, spawn};
