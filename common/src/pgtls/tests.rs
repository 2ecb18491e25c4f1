//! Connection strings and settings, checked at start.

use super::dsn::take_tls;
use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn tls_settings_are_taken_out_of_urls_and_key_value_strings() {
    let (rest, s) = take_tls(
        "postgres://u@db1:5432/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem",
    )
    .unwrap();
    assert_eq!(rest, "postgres://u@db1:5432/x?application_name=a");
    assert_eq!(s.mode.as_deref(), Some("verify-full"));
    assert_eq!(s.root.as_deref(), Some("/etc/ca.pem"));
    let (rest, s) = take_tls(
        "host=db1 sslmode = require  sslcert='/a b/c.pem' password='it\\'s' sslkey=/k.pem dbname=x",
    )
    .unwrap();
    assert_eq!(rest, "host=db1 password='it\\'s' dbname=x");
    assert_eq!(s.mode.as_deref(), Some("require"));
    assert_eq!(s.cert.as_deref(), Some("/a b/c.pem"));
    assert_eq!(s.key.as_deref(), Some("/k.pem"));
    assert!(take_tls("host=db1 sslmode").is_err());
    assert!(take_tls("sslrootcert='/never/closed").is_err());
}

#[test]
fn modes_and_files_are_checked_at_start_with_the_setting_named() {
    let (config, tls) = parse("target", "host=db1 user=u", no_env).unwrap();
    assert_eq!(tls.mode, SslMode::Prefer);
    assert_eq!(config.get_ssl_mode(), PgSslMode::Prefer);
    let (config, tls) = parse("target", "host=db1", |k| {
        (k == "PGSSLMODE").then(|| "disable".to_owned())
    })
    .unwrap();
    assert_eq!(tls.mode, SslMode::Disable);
    assert_eq!(config.get_ssl_mode(), PgSslMode::Disable);
    // The string wins over the variable.
    let (_, tls) = parse("target", "host=db1 sslmode=require", |k| {
        (k == "PGSSLMODE").then(|| "disable".to_owned())
    })
    .unwrap();
    assert_eq!(tls.mode, SslMode::Require);
    let e = parse("target", "host=db1 sslmode=paranoid", no_env).unwrap_err();
    assert!(e.to_string().contains("verify-full"), "{e}");
    let e = parse(
        "target",
        "host=db1 sslmode=verify-full sslrootcert=/nonexistent/ca.pem",
        no_env,
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    let e = parse("target", "host=db1 sslcert=/x.pem", no_env).unwrap_err();
    assert!(e.to_string().contains("sslkey"), "{e}");
    let e = parse(
        "target",
        "host=db1 sslmode=disable sslrootcert=system",
        no_env,
    )
    .unwrap_err();
    assert!(e.to_string().contains("sslmode=disable"), "{e}");
}

#[test]
fn the_system_roots_go_with_verify_full_only() {
    let e = parse(
        "target",
        "host=db1 sslmode=require sslrootcert=system",
        no_env,
    )
    .unwrap_err();
    assert!(e.to_string().contains("use sslmode=verify-full"), "{e}");
    // Without an sslmode, the system's roots mean verify-full (where the
    // system has roots at all).
    if let Ok((_, tls)) = parse("target", "host=db1 sslrootcert=system", no_env) {
        assert_eq!(tls.mode, SslMode::VerifyFull);
    }
}
