//! The Query service as gRPC serves it: the generated `QueryServer` for
//! every method but GetActivity, whose answer is encoded straight from the
//! sessions it holds (`Activity::encode`). A read of a server's 100 sessions
//! otherwise built 1,100 `String`s, encoded them and dropped them again; a
//! read now costs the readers' threads 0.87× the CPU (BENCHMARKS.md,
//! "Collector side by side"). The bytes are the ones prost writes for the
//! message, so clients see no difference.

use std::convert::Infallible;
use std::task::{Context, Poll};

use pgfleet_proto::v1;
use pgfleet_proto::v1::query_server::QueryServer;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::QueryService;

/// GetActivity's path, as gRPC names it.
const GET_ACTIVITY: &str = "/pgfleet.v1.Query/GetActivity";

/// The Query service for a gRPC server (see the module's documentation).
#[derive(Clone)]
pub struct QueryRoutes {
    generated: QueryServer<QueryService>,
    service: QueryService,
    max_message_bytes: usize,
}

impl QueryRoutes {
    /// Serves `service`, taking and sending messages of at most
    /// `max_message_bytes`.
    pub fn new(service: QueryService, max_message_bytes: usize) -> Self {
        QueryRoutes {
            generated: QueryServer::new(service.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            service,
            max_message_bytes,
        }
    }
}

impl NamedService for QueryRoutes {
    const NAME: &'static str = <QueryServer<QueryService> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for QueryRoutes
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != GET_ACTIVITY {
            return self.generated.call(request);
        }
        let method = GetActivity(self.service.clone());
        let max = Some(self.max_message_bytes);
        Box::pin(async move {
            let mut grpc = Grpc::new(ProstCodec::<Encoded, v1::GetActivityRequest>::default())
                .apply_max_message_size_config(max, max);
            Ok(grpc.unary(method, request).await)
        })
    }
}

/// GetActivity, answered with its message's bytes.
struct GetActivity(QueryService);

impl UnaryService<v1::GetActivityRequest> for GetActivity {
    type Response = Encoded;
    type Future = BoxFuture<Response<Encoded>, Status>;

    fn call(&mut self, request: Request<v1::GetActivityRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let activity = service.activity(request.into_inner()).await?;
            Ok(Response::new(Encoded(activity.encode())))
        })
    }
}

/// A message already encoded, sent as it is. It is only ever sent, never
/// decoded: decoding one leaves it empty.
#[derive(Debug, Default)]
struct Encoded(Vec<u8>);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}
