//! The collector a command asks: its address, TLS and read token, the
//! connection, and one line for a call that failed.

use std::time::Duration;

use pgfleet_common::error::chain;
use pgfleet_common::settings::Token;
use pgfleet_common::tls::ClientTls;
use pgfleet_proto::v1::query_client::QueryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::CliError;

/// A collector to ask: its URL, TLS for an https:// one, and the read token
/// to present.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The collector's URL.
    pub url: String,
    /// TLS, for an https:// URL.
    pub tls: Option<ClientTls>,
    /// The read token (`--token-file`, `PGFLEET_TOKEN`), for a collector
    /// started with `--read-tokens-file`.
    pub token: Option<Token>,
    /// How long a call waits for its answer (`--timeout`); None: the
    /// command's own ([`DEFAULT_TIMEOUT`], `top`'s [`TOP_TIMEOUT`]).
    pub timeout: Option<Duration>,
}

/// How long a call waits for its answer unless `--timeout` says: a question
/// by a dimension over a long range and many servers reads every stored
/// minute (the top queries of a day of 1,000 servers took 58 s here).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long `top` waits for a refresh unless `--timeout` says: it asks about
/// now, which a collector answers in milliseconds, so a refresh that takes
/// longer says so on the screen and is tried again, rather than the screen
/// showing older and older figures for two minutes.
pub const TOP_TIMEOUT: Duration = Duration::from_secs(10);

impl Remote {
    /// A collector reached without TLS or token.
    pub fn plain(url: String) -> Self {
        Remote {
            url,
            tls: None,
            token: None,
            timeout: None,
        }
    }

    /// How long a call waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }
}

/// The Query client of every command: each call presents the read token,
/// when there is one.
pub type Client = QueryClient<InterceptedService<Channel, Bearer>>;

/// Puts `authorization: Bearer <token>` on every call.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(…)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A Query client for the collector, or one line saying why not.
pub async fn connect(remote: &Remote) -> Result<Client, CliError> {
    let url = &remote.url;
    let unreachable =
        |why: String| CliError::Failed(format!("cannot reach the collector at {url}: {why}"));
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| unreachable(chain(&e)))?;
    if let Some(tls) = &remote.tls {
        endpoint = tls.apply(endpoint).map_err(|e| unreachable(chain(&e)))?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(remote.timeout());
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(chain(&e)))?;
    let bearer = match &remote.token {
        None => Bearer(None),
        Some(token) => {
            Bearer(Some(format!("Bearer {}", token.secret()).parse().map_err(
                |_| CliError::Usage("the token does not fit a header".into()),
            )?))
        }
    };
    Ok(QueryClient::with_interceptor(channel, bearer))
}

/// One line for a failed call to `remote`.
pub(crate) fn call_failed(remote: &Remote, status: tonic::Status) -> CliError {
    call_failed_at(&remote.url, remote.timeout(), status)
}

/// Whether a call failed on the channel's deadline (`--timeout`).
pub(crate) fn timed_out(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired"
}

/// One line for a failed call to the collector at `url`, given `timeout`.
pub(crate) fn call_failed_at(url: &str, timeout: Duration, status: tonic::Status) -> CliError {
    match status.code() {
        tonic::Code::Unavailable => CliError::Failed(format!(
            "cannot reach the collector at {url}: {}",
            status.message()
        )),
        tonic::Code::InvalidArgument => CliError::Usage(status.message().to_owned()),
        _ if timed_out(&status) => CliError::Failed(format!(
            "the collector at {url} did not answer within {} (--timeout): a question over a long range or many servers can take longer, so give a longer --timeout (like 5m), or ask about less",
            humantime::format_duration(timeout)
        )),
        _ => CliError::Failed(status.message().to_owned()),
    }
}
