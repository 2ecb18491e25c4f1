//! TLS to PostgreSQL and PgBouncer, as libpq does it, with rustls.
//!
//! A connection string (URL or key/value) and the `PGSSL*` variables give
//! libpq's settings, with libpq's meaning and defaults:
//! - `sslmode`: `disable`, `allow`, `prefer` (the default), `require`,
//!   `verify-ca`, `verify-full`;
//! - `sslrootcert`: the CA file (or `system`, the operating system's roots);
//!   with it, `prefer` and `require` check the chain too, as libpq does;
//! - `sslcert` and `sslkey`: a client certificate.
//!
//! tokio-postgres reads only part of this (it refuses `verify-full`), so the
//! TLS settings are taken out of the string here, the files read and checked
//! at start, and tokio-postgres-rustls given a rustls configuration that
//! verifies what the mode asks. `allow` (plain first, TLS if refused) is taken
//! as `prefer`: TLS when the server offers it, never less private than libpq.
//! A failed handshake is explained in one sentence ([`PgTls::explain`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::settings::SettingsError;

mod dsn;
mod verify;

use dsn::{Settings, take_tls};
use verify::{ChainOnly, NoCheck, describe, rustls_error};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Taken as `prefer` (see the module's doc).
    Allow,
    /// TLS when the server offers it.
    #[default]
    Prefer,
    /// TLS always.
    Require,
    /// TLS, and the server's certificate signed by `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<SslMode, SettingsError> {
        crate::settings::parse_choice(
            "an sslmode",
            text,
            &[
                ("disable", SslMode::Disable),
                ("allow", SslMode::Allow),
                ("prefer", SslMode::Prefer),
                ("require", SslMode::Require),
                ("verify-ca", SslMode::VerifyCa),
                ("verify-full", SslMode::VerifyFull),
            ],
        )
        .map_err(|message| SettingsError::Invalid {
            key: "sslmode",
            message,
        })
    }

    /// Its name, as libpq writes it.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How a connection to one PostgreSQL server or PgBouncer does TLS.
#[derive(Clone)]
pub struct PgTls {
    /// The mode asked for.
    pub mode: SslMode,
    /// `sslrootcert`, as given (a path, or `system`).
    pub root: Option<String>,
    /// `sslcert`, as given.
    pub cert: Option<PathBuf>,
    /// The rustls configuration, built once at start.
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("root", &self.root)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Default for PgTls {
    /// libpq's default: `prefer`, checking nothing.
    fn default() -> Self {
        PgTls::build(SslMode::Prefer, None, None, None).expect("prefer needs no file")
    }
}

/// Parses a PostgreSQL connection string (`postgres://…` or `host=… …`) and
/// its TLS settings, which the `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT` and
/// `PGSSLKEY` that `env` returns fill where the string is silent. `key`
/// names the setting for errors. The files are read now.
pub fn parse(
    key: &'static str,
    text: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(tokio_postgres::Config, PgTls), SettingsError> {
    let (rest, mut settings) =
        take_tls(text.trim()).map_err(|message| SettingsError::Invalid { key, message })?;
    let mut config = if rest.trim().is_empty() {
        tokio_postgres::Config::new()
    } else {
        rest.parse::<tokio_postgres::Config>()
            .map_err(|e| SettingsError::Invalid {
                key,
                message: format!(
                    "cannot parse it as a PostgreSQL URL or key/value string ({e}); write it like postgres://user@host:5432/db or \"host=db1 user=pgfleet\""
                ),
            })?
    };
    for (variable, setting) in [
        ("PGSSLMODE", "sslmode"),
        ("PGSSLROOTCERT", "sslrootcert"),
        ("PGSSLCERT", "sslcert"),
        ("PGSSLKEY", "sslkey"),
    ] {
        let missing = match setting {
            "sslmode" => settings.mode.is_none(),
            "sslrootcert" => settings.root.is_none(),
            "sslcert" => settings.cert.is_none(),
            _ => settings.key.is_none(),
        };
        if missing && let Some(value) = env(variable).filter(|v| !v.is_empty()) {
            settings.set(setting, value);
        }
    }
    let tls = PgTls::from_settings(&settings)?;
    tls.apply(&mut config);
    Ok((config, tls))
}

impl PgTls {
    fn from_settings(s: &Settings) -> Result<PgTls, SettingsError> {
        let mode = match &s.mode {
            Some(m) => SslMode::parse(m)?,
            // As libpq 16: the system's roots mean checking the name too.
            None if s.root.as_deref() == Some("system") => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        PgTls::build(
            mode,
            s.root.as_deref(),
            s.cert.as_deref().map(Path::new),
            s.key.as_deref().map(Path::new),
        )
    }

    /// TLS in `mode`, checking the server against `root` (a PEM file, or
    /// `system`), showing the client certificate `cert` with `key`.
    pub fn build(
        mode: SslMode,
        root: Option<&str>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<PgTls, SettingsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SettingsError::Invalid {
                key: "sslmode",
                message: e.to_string(),
            })?;
        // libpq's default root file, for the modes that must check.
        let default_root = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
            .filter(|p| p.is_file());
        let root = match (root, mode) {
            (Some(r), _) => Some(r.to_owned()),
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => match default_root {
                Some(p) => Some(p.display().to_string()),
                None => {
                    return Err(SettingsError::Missing {
                        key: "sslrootcert",
                        hint: "sslmode=verify-ca and verify-full check the server's certificate: give sslrootcert=FILE (the CA that signed it), or sslrootcert=system for the operating system's roots",
                    });
                }
            },
            // As libpq: where ~/.postgresql/root.crt exists, prefer and
            // require check the chain against it too.
            (None, SslMode::Disable) => None,
            (None, _) => default_root.map(|p| p.display().to_string()),
        };
        // Any public CA signs for anyone: with the system's roots, only a
        // check of the name means something (libpq 16 refuses the rest too).
        if root.as_deref() == Some("system") && mode != SslMode::VerifyFull {
            return Err(SettingsError::Invalid {
                key: "sslmode",
                message: format!(
                    "sslmode={} may not be used with sslrootcert=system, which any public CA satisfies; use sslmode=verify-full",
                    mode.name()
                ),
            });
        }
        // What to check: with a root, the chain (and the name, for
        // verify-full); without, nothing (prefer, require), as libpq.
        let verifier: Arc<dyn ServerCertVerifier> = match &root {
            None => Arc::new(NoCheck(provider.clone())),
            Some(r) => {
                let roots = Arc::new(load_roots(r)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| SettingsError::Invalid {
                        key: "sslrootcert",
                        message: format!("{r}: {e}"),
                    })?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (cert, key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| file_error("sslcert", cert, e))?;
                if chain.is_empty() {
                    return Err(SettingsError::Invalid {
                        key: "sslcert",
                        message: format!("{} holds no certificate", cert.display()),
                    });
                }
                let private =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("sslkey", key, e))?;
                builder.with_client_auth_cert(chain, private).map_err(|e| {
                    SettingsError::Invalid {
                        key: "sslkey",
                        message: format!("{} does not go with sslcert: {e}", key.display()),
                    }
                })?
            }
            (Some(_), None) => {
                return Err(SettingsError::Missing {
                    key: "sslkey",
                    hint: "sslcert needs sslkey, the private key of the client certificate",
                });
            }
            (None, Some(_)) => {
                return Err(SettingsError::Missing {
                    key: "sslcert",
                    hint: "sslkey needs sslcert, the client certificate it belongs to",
                });
            }
        };
        if mode == SslMode::Disable && (root.is_some() || cert.is_some()) {
            return Err(SettingsError::Invalid {
                key: "sslmode",
                message: "sslmode=disable uses no TLS, so sslrootcert, sslcert and sslkey would be ignored; remove them or choose another sslmode".to_owned(),
            });
        }
        Ok(PgTls {
            mode,
            root,
            cert: cert.map(Path::to_owned),
            config: Arc::new(config),
        })
    }

    /// Sets `config`'s TLS mode to what tokio-postgres should do.
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        });
    }

    /// The connector for tokio-postgres and deadpool-postgres.
    pub fn connector(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new((*self.config).clone())
    }

    /// One sentence for a connection to `place` ("db1:5432") that failed:
    /// a TLS handshake explained, with the setting to look at; anything
    /// else as PostgreSQL or the network said it.
    pub fn explain(&self, place: &str, err: &(dyn std::error::Error + 'static)) -> String {
        let mut source = Some(err);
        while let Some(e) = source {
            if let Some(tls) = rustls_error(e) {
                return format!(
                    "TLS handshake with {place} failed: {}{}",
                    describe(tls),
                    self.context()
                );
            }
            if let Some(db) = e
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(|e| e.as_db_error())
            {
                // PostgreSQL's own reason (pg_hba.conf, a role, a
                // certificate it wants), without the driver's prefix.
                return format!("{place} refused: {}: {}", db.severity(), db.message());
            }
            if e.to_string().contains("server does not support TLS") {
                return format!(
                    "{place} does not accept TLS, and sslmode={} requires it",
                    self.mode.name()
                );
            }
            source = e.source();
        }
        crate::error::chain(err)
    }

    /// The settings a handshake error depends on, in parentheses.
    fn context(&self) -> String {
        let mut parts = vec![format!("sslmode={}", self.mode.name())];
        if let Some(r) = &self.root {
            parts.push(format!("sslrootcert={r}"));
        }
        if let Some(c) = &self.cert {
            parts.push(format!("sslcert={}", c.display()));
        }
        format!(" ({})", parts.join(", "))
    }
}

fn file_error(key: &'static str, path: &Path, e: impl std::fmt::Display) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    }
}

/// The roots of `root`: a PEM file, or `system`.
fn load_roots(root: &str) -> Result<RootCertStore, SettingsError> {
    let mut store = RootCertStore::empty();
    if root == "system" {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(SettingsError::Invalid {
                key: "sslrootcert",
                message: "sslrootcert=system found no CA certificate on this system (install ca-certificates, or give the CA's file)".to_owned(),
            });
        }
        return Ok(store);
    }
    let path = Path::new(root);
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("sslrootcert", path, e))?;
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(SettingsError::Invalid {
            key: "sslrootcert",
            message: format!("{root} holds no CA certificate in PEM"),
        });
    }
    Ok(store)
}

#[cfg(test)]
mod tests;
