//! The collector and the agent's PoolReporter speak the standard gRPC health
//! and reflection protocols (reflection v1 and v1alpha), so grpcurl, grpcui,
//! Postman, Python's grpcio-reflection, grpc_health_probe and load balancers
//! work against them.

use std::time::Duration;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checking_and_reflection_answer() {
    let fleet = pgfleet_tests::fleet("db-tools", &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(fleet.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "pgfleet.v1.Ingest", "pgfleet.v1.Query"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.Such".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "pgfleet.v1.Ingest",
        "pgfleet.v1.Query",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    fleet.stop().await;
}

/// Runs tests/scripts/reflect.py (Python's grpcio-reflection client, which
/// asks reflection v1alpha only) against `address`.
async fn reflect(address: &str, call: Option<&str>) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/reflect.py");
    let mut args = vec![script, address];
    if let Some(call) = call {
        args.extend(["--call", call]);
    }
    let out = tokio::process::Command::new("python3")
        .args(&args)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reflect.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn names(answer: &serde_json::Value) -> Vec<&str> {
    answer["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_reflection_lists_both_servers_and_calls_list_servers_by_reflection_alone() {
    let fleet = pgfleet_tests::fleet("db-reflect", &[("dc", "eu1")]).await;
    let client = fleet.client().await.unwrap();
    pgfleet_tests::wait_for_status(&client, "db-reflect", "up", Duration::from_secs(20)).await;

    let collector = fleet.url.trim_start_matches("http://");
    let answer = reflect(collector, Some("pgfleet.v1.Query/ListServers")).await;
    let services = names(&answer);
    for expected in [
        "pgfleet.v1.Ingest",
        "pgfleet.v1.Query",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&expected), "{expected} missing: {answer}");
    }
    assert!(
        !services.contains(&"pgfleet.v1.PoolReporter"),
        "the collector does not serve the agent's service: {answer}"
    );
    let servers = answer["response"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{answer}");
    assert_eq!(servers[0]["server_id"], "db-reflect");
    assert_eq!(servers[0]["labels"]["dc"], "eu1");

    // The agent's PoolReporter: its service and health, found the same way.
    let agent = fleet
        .pool_reporter()
        .expect("the reporter is on")
        .to_string();
    let answer = reflect(&agent, Some("grpc.health.v1.Health/Check")).await;
    let services = names(&answer);
    assert!(
        services.contains(&"pgfleet.v1.PoolReporter")
            && services.contains(&"grpc.health.v1.Health"),
        "{answer}"
    );
    assert!(!services.contains(&"pgfleet.v1.Query"), "{answer}");
    assert_eq!(answer["response"]["status"], "SERVING", "{answer}");
    fleet.stop().await;
}
