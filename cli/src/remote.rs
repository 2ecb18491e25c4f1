//! The collector a command asks: its address and TLS, the connection, and
//! one line for a call that failed.

use std::time::Duration;

use pgfleet_common::error::chain;
use pgfleet_common::tls::ClientTls;
use pgfleet_proto::v1::query_client::QueryClient;
use tonic::transport::{Channel, Endpoint};

use super::CliError;

/// A collector to ask: its URL, and TLS for an https:// one.
#[derive(Debug, Clone)]
pub struct Remote {
    /// The collector's URL.
    pub url: String,
    /// TLS, for an https:// URL.
    pub tls: Option<ClientTls>,
}

impl Remote {
    /// A collector reached without TLS.
    pub fn plain(url: String) -> Self {
        Remote { url, tls: None }
    }
}

/// A Query client for the collector, or one line saying why not.
pub async fn connect(remote: &Remote) -> Result<QueryClient<Channel>, CliError> {
    let url = &remote.url;
    let unreachable =
        |why: String| CliError::Failed(format!("cannot reach the collector at {url}: {why}"));
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| unreachable(chain(&e)))?;
    if let Some(tls) = &remote.tls {
        endpoint = tls.apply(endpoint).map_err(|e| unreachable(chain(&e)))?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(15));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| unreachable(chain(&e)))?;
    Ok(QueryClient::new(channel))
}

/// One line for a failed call to the collector at `url`.
pub(crate) fn call_failed(url: &str, status: tonic::Status) -> CliError {
    match status.code() {
        tonic::Code::Unavailable => CliError::Failed(format!(
            "cannot reach the collector at {url}: {}",
            status.message()
        )),
        tonic::Code::InvalidArgument => CliError::Usage(status.message().to_owned()),
        _ => CliError::Failed(status.message().to_owned()),
    }
}
