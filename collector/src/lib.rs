//! The pgfleet collector: the server alone (the `pgfleet` command is the
//! pgfleet-cli crate).
//!
//! `ingest` (the Ingest service) and `follow` (other collectors' servers, from
//! a shared store) send commands to `aggregator` (one task owning the live
//! fleet state, built on `state` and `rollup`), which writes the history to
//! `store`; `query` (the Query service), `series` and `metrics` read its
//! published views and the store; `http` serves `metrics` and the Query
//! API as JSON. `config` reads the settings and `server`
//! assembles it all.
#![forbid(unsafe_code)]

pub mod aggregator;
pub mod auth;
pub mod config;
pub mod follow;
pub mod http;
pub mod ingest;
pub mod listen;
pub mod load;
pub mod metrics;
pub mod query;
pub mod rollup;
pub mod series;
pub mod server;
pub mod state;
pub mod store;
pub mod threads;
pub mod zstd_local;
