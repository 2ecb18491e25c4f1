//! Generates the pgfleet.v1 code with a vendored protoc, so no protoc is needed on PATH.

use std::path::PathBuf;

/// Query-API messages that the CLI prints as JSON, keyed by their proto field names.
const JSON_MESSAGES: &[&str] = &[
    "Server",
    "ServerInfo",
    "AgentCounters",
    "StreamStats",
    "FleetSummaryRow",
    "ServerSession",
    "BlockingTree",
    "BlockingNode",
    "PoolUtilisation",
    "Session",
    "GetActivityResponse",
    "GetPoolsResponse",
    "ConnectionSlots",
    "SlotCount",
    "PgBouncerSample",
    "PgBouncerPool",
    "PgBouncerStats",
    "ClientPool",
    "GetDatabasesResponse",
    "DatabaseTotals",
    "DatabaseCounters",
    "QueryMetricsResponse",
    "MetricSeries",
    "MetricPoint",
    "LoadNow",
    "KeyValue",
    "QueryLoadResponse",
    "LoadSeries",
    "TopQueriesResponse",
    "TopQuery",
    "StatementTotals",
    "GetChurnResponse",
    "ChurnRow",
    "ListServersResponse",
    "FleetSummaryResponse",
    "TopSessionsResponse",
    "BlockingTreesResponse",
    "WatchFull",
];

/// Their google.protobuf.Timestamp and Duration fields, with the serde helper for each.
const JSON_FIELDS: &[(&str, &str)] = &[
    ("Server.last_seen", "timestamp"),
    ("Server.sample_interval", "duration"),
    ("GetActivityResponse.sampled_at", "timestamp"),
    ("Session.backend_start", "timestamp"),
    ("Session.xact_start", "timestamp"),
    ("Session.query_start", "timestamp"),
    ("Session.state_change", "timestamp"),
    ("Session.duration", "duration"),
    ("Session.xact_age", "duration"),
    ("Session.query_age", "duration"),
    ("Session.state_age", "duration"),
    ("ServerInfo.start_time", "timestamp"),
    ("GetPoolsResponse.sampled_at", "timestamp"),
    ("DatabaseTotals.since", "timestamp"),
    ("ClientPool.kind", "pool_kind"),
    ("FleetSummaryRow.longest_transaction", "duration"),
    ("BlockingTree.longest_wait", "duration"),
    ("QueryMetricsResponse.step", "duration"),
    ("MetricPoint.at", "timestamp"),
    ("QueryLoadResponse.step", "duration"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "pgfleet/v1/ingest.proto",
        "pgfleet/v1/query.proto",
        "pgfleet/v1/reporter.proto",
    ];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Printed in a stable order.
    config.btree_map([".pgfleet.v1.MetricSeries.labels"]);

    let mut builder = tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("pgfleet_descriptor.bin"));
    for message in JSON_MESSAGES {
        builder = builder.message_attribute(
            format!(".pgfleet.v1.{message}"),
            "#[derive(serde::Serialize)]",
        );
    }
    for (field, helper) in JSON_FIELDS {
        builder = builder.field_attribute(
            format!(".pgfleet.v1.{field}"),
            format!("#[serde(serialize_with = \"crate::json::{helper}\")]"),
        );
    }
    let vendored_include = protoc_bin_vendored::include_path()?;
    builder.compile_with_config(
        config,
        &protos.map(PathBuf::from),
        &[PathBuf::from("."), vendored_include],
    )?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
