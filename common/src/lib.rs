//! What every pgfleet binary shares, so that none of them depends on another:
//! `settings` (TOML files, durations, labels, tokens, choices, endpoints; flags
//! and the environment are clap's), `tls` (PEM files for gRPC links), `pgtls`
//! (TLS to PostgreSQL and PgBouncer, as libpq does it),
//! `runtime` (argument errors, tracing, stop signals), `error` (one-line error
//! chains), `backoff` (every retry's delays) and `sched` (a higher priority
//! and a short time slice for threads that answer readers).
#![deny(unsafe_code)]

pub mod backoff;
pub mod error;
pub mod pgtls;
pub mod runtime;
pub mod sched;
pub mod settings;
pub mod tls;

pub use settings::SettingsError;
