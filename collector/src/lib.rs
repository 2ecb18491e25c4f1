//! The pgfleet collector and the `pgfleet` command line.
//!
//! `ingest` (the Ingest service) → `aggregator` (one task owning the live fleet
//! state) → `query` (the Query service); `server` assembles them; `cli` is the
//! `pgfleet` command; `sandbox` starts throwaway PostgreSQL clusters for the demo
//! and the tests.
#![forbid(unsafe_code)]

pub mod aggregator;
pub mod config;
pub mod follow;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod rollup;
pub mod series;
pub mod server;
pub mod state;
pub mod store;
