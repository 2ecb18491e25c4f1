//! Certificates for the TLS tests, made by the test itself (rcgen): a CA,
//! and certificates it signs.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA named `name`, self-signed.
pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to check");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key"))
        .expect("a CA certificate")
}

/// A certificate for `sans` (and the common name `cn`, when given) signed by
/// `ca`: its PEM and its key's PEM.
pub fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    sans: Vec<String>,
    cn: Option<&str>,
) -> (String, String) {
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(sans).expect("names rcgen takes");
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    let cert = params.signed_by(&key, ca).expect("a signed certificate");
    (cert.pem(), key.serialize_pem())
}
