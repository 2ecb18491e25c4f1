//! `pgfleet-agent --once`: one complete sample of each target, as JSON, so a user
//! can check the agent's role and settings before deploying it.

use pgfleet_proto::model::{Snapshot, TargetStatus};
use pgfleet_proto::time::{micros_to_system_time, now_micros};
use pgfleet_proto::{query_session, server_info};
use serde_json::{Value, json};

use crate::config::AgentConfig;
use pgfleet_common::settings::SettingsError;

/// Samples every target once. Returns the JSON document and whether every
/// target could be sampled.
pub async fn sample_all(config: &AgentConfig) -> Result<(Value, bool), SettingsError> {
    let (samplers, _) = crate::samplers(config)?;
    let mut all_up = true;
    let mut out = Vec::with_capacity(samplers.len());
    for mut sampler in samplers {
        let at = now_micros();
        let snapshot = match sampler.sample(at).await {
            Ok(s) => s,
            Err(reason) => sampler.down(at, reason),
        };
        all_up &= snapshot.status == TargetStatus::Up;
        let mut json = render(&snapshot, sampler.database_totals());
        if snapshot.status == TargetStatus::Up {
            // Whether pg_stat_statements can be read, or what it needs.
            json["statements"] = Value::String(sampler.statements_status());
            // Whether the connection is encrypted, and how.
            json["tls"] = match sampler.tls_in_use().await {
                Ok(version) => Value::String(version),
                Err(e) => Value::String(format!("unknown ({e})")),
            };
        }
        out.push(json);
    }
    Ok((Value::Array(out), all_up))
}

/// One snapshot as `--once` prints it: the query API's shapes, and database
/// counters as the totals PostgreSQL holds (one sample has no increments).
fn render(s: &Snapshot, database_totals: Vec<pgfleet_proto::v1::DatabaseCounters>) -> Value {
    let (status, reason) = match &s.status {
        TargetStatus::Up => ("up", ""),
        TargetStatus::Down(reason) => ("down", reason.as_str()),
    };
    let sessions: Vec<_> = s
        .sessions
        .iter()
        .map(|x| query_session(x, s.sampled_at_us))
        .collect();
    json!({
        "server_id": s.server_id,
        "sampled_at": humantime::format_rfc3339_micros(micros_to_system_time(s.sampled_at_us)).to_string(),
        "status": status,
        "reason": reason,
        "info": s.facts.as_ref().map(server_info),
        "slots": s.slots,
        "sessions": sessions,
        "databases": database_totals,
        "pgbouncer": s.pgbouncer,
        "client_pools": s.client_pools,
        "agent": s.agent,
    })
}
