//! TLS on pgfleet's gRPC links (rustls, through tonic) and on the
//! collector's HTTP port (rustls), configured by PEM file paths. The files
//! are read when the settings are, so a missing or wrong file is named at
//! start, not at the first connection.

use std::path::Path;
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::settings::SettingsError;

/// How a client (the agent, the CLI) checks the collector, and the
/// certificate it shows for mutual TLS.
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
}

/// The PEM files a client is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTlsFiles<'a> {
    /// The CA that signed the collector's certificate.
    pub ca: Option<&'a Path>,
    /// The client's certificate, for mutual TLS.
    pub cert: Option<&'a Path>,
    /// Its private key.
    pub key: Option<&'a Path>,
    /// The name to check the collector's certificate against, when it is not
    /// the URL's host.
    pub server_name: Option<&'a str>,
}

impl ClientTls {
    /// TLS for a client of `url`: `Some` for an https:// URL, which needs a CA;
    /// `None` for http://, which must not be given TLS files.
    pub fn load(url: &str, files: ClientTlsFiles<'_>) -> Result<Option<ClientTls>, SettingsError> {
        let https = url.starts_with("https://");
        if !https {
            if files.ca.is_some() || files.cert.is_some() || files.key.is_some() {
                return Err(SettingsError::Invalid {
                    key: "collector",
                    message: format!(
                        "TLS files are given, so write the collector as https://…, not {url}"
                    ),
                });
            }
            return Ok(None);
        }
        let Some(ca) = files.ca else {
            return Err(SettingsError::Missing {
                key: "tls_ca",
                hint: "an https:// collector needs --tls-ca, the CA that signed its certificate (for a public CA, the system's bundle: /etc/ssl/certs/ca-certificates.crt)",
            });
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read_pem("tls_ca", ca, CERT)?));
        if let Some(identity) = identity("tls_cert", "tls_key", files.cert, files.key)? {
            config = config.identity(identity);
        }
        if let Some(name) = files.server_name {
            config = config.domain_name(name);
        }
        Ok(Some(ClientTls { config }))
    }

    /// `endpoint` with TLS on.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
        endpoint.tls_config(self.config.clone())
    }
}

/// The collector's certificate, and the CA its clients' certificates must be
/// signed by for mutual TLS.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The configuration tonic serves with.
    pub config: ServerTlsConfig,
    /// Whether clients must show a certificate.
    pub mutual: bool,
    /// The same certificate for the HTTP port (HTTP/1.1). It asks no client
    /// for a certificate: read tokens guard what it serves, and a browser
    /// has none to show.
    pub http: Arc<rustls::ServerConfig>,
}

impl ServerTls {
    /// TLS for a server: `None` when no certificate is given. A client CA
    /// requires every client to show a certificate signed by it.
    pub fn load(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<ServerTls>, SettingsError> {
        let Some((cert_pem, key_pem)) = pem_pair("tls_cert", "tls_key", cert, key)? else {
            if client_ca.is_some() {
                return Err(SettingsError::Missing {
                    key: "tls_cert",
                    hint: "--tls-client-ca asks clients for certificates, which needs TLS: give --tls-cert and --tls-key too",
                });
            }
            return Ok(None);
        };
        let http = http_config(&cert_pem, &key_pem)?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = client_ca {
            config =
                config.client_ca_root(Certificate::from_pem(read_pem("tls_client_ca", ca, CERT)?));
        }
        Ok(Some(ServerTls {
            config,
            mutual: client_ca.is_some(),
            http: Arc::new(http),
        }))
    }
}

/// rustls's server configuration for a certificate chain and its key
/// (PEM), speaking HTTP/1.1.
fn http_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, SettingsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |key: &'static str, what: String| SettingsError::Invalid { key, message: what };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("tls_cert", format!("its certificates do not parse: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid("tls_key", format!("its private key does not parse: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid("tls_cert", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        invalid(
            "tls_key",
            format!("it does not go with the certificate of --tls-cert: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

const CERT: &str = "-----BEGIN CERTIFICATE-----";
const PRIVATE_KEY: &str = "PRIVATE KEY-----";

/// A certificate and its key, both or neither.
fn identity(
    cert_key: &'static str,
    key_key: &'static str,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Identity>, SettingsError> {
    Ok(pem_pair(cert_key, key_key, cert, key)?.map(|(c, k)| Identity::from_pem(c, k)))
}

/// The PEM of a certificate, and of its key.
type PemPair = (Vec<u8>, Vec<u8>);

/// The PEM of a certificate and of its key, both or neither.
fn pem_pair(
    cert_key: &'static str,
    key_key: &'static str,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<PemPair>, SettingsError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some((
            read_pem(cert_key, cert, CERT)?,
            read_pem(key_key, key, PRIVATE_KEY)?,
        ))),
        (Some(_), None) => Err(SettingsError::Invalid {
            key: key_key,
            message: format!("--{} goes with --{}", dashed(key_key), dashed(cert_key)),
        }),
        (None, Some(_)) => Err(SettingsError::Invalid {
            key: cert_key,
            message: format!("--{} goes with --{}", dashed(cert_key), dashed(key_key)),
        }),
    }
}

fn dashed(key: &str) -> String {
    key.replace('_', "-")
}

/// Reads a PEM file that must contain `marker`.
fn read_pem(key: &'static str, path: &Path, marker: &str) -> Result<Vec<u8>, SettingsError> {
    let pem = std::fs::read(path).map_err(|e| SettingsError::Invalid {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    if !String::from_utf8_lossy(&pem).contains(marker) {
        return Err(SettingsError::Invalid {
            key,
            message: format!(
                "{} is not a PEM file with a {}",
                path.display(),
                if marker == CERT {
                    "certificate"
                } else {
                    "private key"
                }
            ),
        });
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_must_fit_the_url_and_each_other() {
        let ca = Path::new("/nonexistent/ca.pem");
        let err = ClientTls::load(
            "http://c:7600",
            ClientTlsFiles {
                ca: Some(ca),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("https://"), "{err}");
        let err = ClientTls::load("https://c:7600", ClientTlsFiles::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-ca"), "{err}");
        let err = ClientTls::load(
            "https://c:7600",
            ClientTlsFiles {
                ca: Some(ca),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot read /nonexistent/ca.pem"), "{err}");
        let err = ServerTls::load(Some(ca), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-key goes with --tls-cert"), "{err}");
        let err = ServerTls::load(None, None, Some(ca))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        assert!(ServerTls::load(None, None, None).unwrap().is_none());
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let path = std::env::temp_dir().join(format!("pgfleet-notpem-{}", std::process::id()));
        std::fs::write(&path, "hello").unwrap();
        let err = ServerTls::load(Some(&path), Some(&path), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not a PEM file with a certificate"),
            "{err}"
        );
        std::fs::remove_file(path).unwrap();
    }
}
