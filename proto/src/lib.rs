//! The pgfleet.v1 wire contract.
//!
//! - [`v1`]: the code generated from `proto/pgfleet/v1/*.proto`.
//! - [`model`]: the domain types that samplers produce and the collector holds.
//! - The conversions between the two live in this crate and nowhere else.
#![forbid(unsafe_code)]

pub mod compact;
mod convert;
pub mod json;
pub mod model;
pub mod names;
pub mod reflection;
pub mod time;

pub use convert::{DecodeError, encode_query_session, query_session, server_info};

/// The largest gRPC message either side of the ingest stream accepts.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Generated types and services of the `pgfleet.v1` package.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("pgfleet.v1");

    /// The encoded descriptors of every pgfleet.v1 file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("pgfleet_descriptor");
}
