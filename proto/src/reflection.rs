//! gRPC server reflection, v1 and v1alpha, for every pgfleet gRPC server, so
//! that any common tool discovers the API: grpcurl and grpcui ask v1, while
//! Postman and Python's grpcio-reflection client ask v1alpha only.

pub use tonic_reflection::server::Error;
use tonic_reflection::server::{Builder, v1, v1alpha};

/// The health checking service, served beside pgfleet's on every server.
pub const HEALTH: &str = "grpc.health.v1.Health";

fn builder(services: &[&str]) -> Builder<'static> {
    let builder = Builder::configure()
        .register_encoded_file_descriptor_set(crate::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    services
        .iter()
        .fold(builder, |b, name| b.with_service_name(*name))
}

/// Reflection v1 and v1alpha, each listing `services` (full names, as
/// `pgfleet.v1.Query`): a server adds both.
#[allow(clippy::type_complexity)]
pub fn servers(
    services: &[&str],
) -> Result<
    (
        v1::ServerReflectionServer<impl v1::ServerReflection>,
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
    ),
    Error,
> {
    Ok((v1(services)?, v1alpha(services)?))
}

/// Reflection v1, listing `services`.
fn v1(services: &[&str]) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder(services)
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
}

/// Reflection v1alpha, listing `services`.
fn v1alpha(
    services: &[&str],
) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder(services)
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
        .build_v1alpha()
}
