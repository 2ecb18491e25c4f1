//! Helpers that every pgfleet binary uses to read its settings, in the order of
//! precedence flag, environment (`PGFLEET_…`), TOML file, default. Flags and the
//! environment are clap's job; this module reads the file and checks values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// A setting that cannot be used, with a message that names it.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The config file cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file named by `--config`.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("invalid config file {}: {}", path.display(), message.trim_end())]
    Parse {
        /// The file named by `--config`.
        path: PathBuf,
        /// What the TOML parser said, with the line and column.
        message: String,
    },
    /// One setting has a value that cannot be used.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The setting's name, as a config key.
        key: &'static str,
        /// What is wrong with the value, and what would be right.
        message: String,
    },
    /// A required setting is missing.
    #[error("missing `{key}`: {hint}")]
    Missing {
        /// The setting's name, as a config key.
        key: &'static str,
        /// How to give it.
        hint: &'static str,
    },
}

/// Reads a TOML config file into `T`, or `T::default()` when no file is named.
pub fn read_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, SettingsError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Parses config text that came from `path`.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, SettingsError> {
    toml::from_str(text).map_err(|e| SettingsError::Parse {
        path: path.to_owned(),
        message: e.to_string().replace('\n', " "),
    })
}

/// Parses a duration like "1s", "500ms" or "2m" and checks it lies in `range`.
pub fn parse_duration(
    key: &'static str,
    text: &str,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, SettingsError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| SettingsError::Invalid {
        key,
        message: format!("{text:?} is not a duration ({e}); write it like \"1s\" or \"500ms\""),
    })?;
    if !range.contains(&d) {
        return Err(SettingsError::Invalid {
            key,
            message: format!(
                "{text:?} is out of range; it must lie between {} and {}",
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            ),
        });
    }
    Ok(d)
}

/// Parses `key=value` labels, checking their names and sizes.
pub fn parse_labels<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<std::collections::BTreeMap<String, String>, SettingsError> {
    let mut labels = std::collections::BTreeMap::new();
    for item in items {
        let Some((name, value)) = item.split_once('=') else {
            return Err(SettingsError::Invalid {
                key: "label",
                message: format!("{item:?} is not of the form name=value, as in dc=eu1"),
            });
        };
        check_label(name.trim(), value.trim())?;
        labels.insert(name.trim().to_owned(), value.trim().to_owned());
    }
    Ok(labels)
}

/// The longest label name or value, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// Checks one label: a Prometheus-style name and a value of bounded size.
pub fn check_label(name: &str, value: &str) -> Result<(), SettingsError> {
    let valid_name = !name.is_empty()
        && name.len() <= MAX_LABEL_BYTES
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(SettingsError::Invalid {
            key: "label",
            message: format!(
                "label name {name:?} must be letters, digits and '_', not start with a digit, and be at most {MAX_LABEL_BYTES} bytes"
            ),
        });
    }
    if value.len() > MAX_LABEL_BYTES {
        return Err(SettingsError::Invalid {
            key: "label",
            message: format!("the value of label {name:?} is longer than {MAX_LABEL_BYTES} bytes"),
        });
    }
    Ok(())
}

/// One of a setting's named choices, read without regard to case; an error
/// says what was given and lists the choices.
pub fn parse_choice<T: Copy>(what: &str, text: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let given = text.trim().to_ascii_lowercase();
    if let Some((_, value)) = choices.iter().find(|(name, _)| *name == given) {
        return Ok(*value);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let expected = match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("{given:?} is not {what}; expected {expected}"))
}

/// A URL for a gRPC endpoint; "host:port" is taken as "http://host:port".
pub fn endpoint_url(key: &'static str, text: &str) -> Result<String, SettingsError> {
    let text = text.trim();
    let url = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    match url.parse::<tonic::transport::Uri>() {
        Ok(uri) if uri.host().is_some() && matches!(uri.scheme_str(), Some("http" | "https")) => {
            Ok(url)
        }
        _ => Err(SettingsError::Invalid {
            key,
            message: format!("{text:?} is not an address like http://127.0.0.1:7600"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_parsed_and_bounded() {
        let range = Duration::from_millis(100)..=Duration::from_secs(60);
        assert_eq!(
            parse_duration("interval", "500ms", range.clone()).unwrap(),
            Duration::from_millis(500)
        );
        let err = parse_duration("interval", "5 parsecs", range.clone()).unwrap_err();
        assert!(err.to_string().starts_with("invalid `interval`"), "{err}");
        let err = parse_duration("interval", "2h", range).unwrap_err();
        assert!(err.to_string().contains("between 100ms and 1m"), "{err}");
    }

    #[test]
    fn labels_need_a_name_and_an_equals_sign() {
        let labels = parse_labels(["dc=eu1", " cluster = orders "]).unwrap();
        assert_eq!(labels["cluster"], "orders");
        assert!(parse_labels(["dc"]).is_err());
        assert!(parse_labels(["1dc=x"]).is_err());
        assert!(parse_labels(["d-c=x"]).is_err());
        assert!(parse_labels([format!("dc={}", "x".repeat(129)).as_str()]).is_err());
    }

    #[test]
    fn endpoints_get_a_scheme_and_bad_ones_are_named() {
        assert_eq!(
            endpoint_url("collector", "127.0.0.1:7600").unwrap(),
            "http://127.0.0.1:7600"
        );
        assert!(endpoint_url("collector", "https://c.example:443").is_ok());
        let err = endpoint_url("collector", "ftp://x").unwrap_err();
        assert!(err.to_string().contains("`collector`"), "{err}");
    }
}

/// A bearer token: what an agent or a reader presents to its collector. It
/// never shows in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// The shortest token accepted: guessing one must be hopeless.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Token {
    /// A token from its text (surrounding whitespace dropped); `key` names the
    /// setting it came from, for the error.
    pub fn new(key: &'static str, text: &str) -> Result<Self, SettingsError> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_BYTES || !text.chars().all(|c| c.is_ascii_graphic()) {
            return Err(SettingsError::Invalid {
                key,
                message: format!(
                    "a token must be at least {MIN_TOKEN_BYTES} printable ASCII characters, without spaces (for example from `openssl rand -hex 32`)"
                ),
            });
        }
        Ok(Token(text.to_owned()))
    }

    /// The token's text, to put on the wire; never log it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// `Bearer <token>` as a gRPC header value, marked sensitive so that
    /// HTTP/2 never keeps it in its header-compression table. A token is
    /// printable ASCII ([`Token::new`] checks it), so it always fits.
    pub fn bearer(
        &self,
    ) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, SettingsError> {
        let mut value: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {}", self.0)
                .parse()
                .map_err(|_| SettingsError::Invalid {
                    key: "token",
                    message: "the token does not fit a header".to_owned(),
                })?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// Whether `presented` is this token, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        let mut diff = mine.len() ^ presented.len();
        for i in 0..mine.len().max(presented.len()) {
            let a = mine.get(i).copied().unwrap_or(0);
            let b = presented.get(i).copied().unwrap_or(0);
            diff |= usize::from(a ^ b);
        }
        std::hint::black_box(diff) == 0
    }
}

/// Reads tokens from `path`, one per line (blank lines and lines starting with
/// `#` are skipped); at least one. `key` names the setting.
pub fn read_tokens(key: &'static str, path: &Path) -> Result<Vec<Token>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::Invalid {
        key,
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    let tokens = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Token::new(key, l))
        .collect::<Result<Vec<_>, _>>()?;
    if tokens.is_empty() {
        return Err(SettingsError::Invalid {
            key,
            message: format!("{} holds no token", path.display()),
        });
    }
    Ok(tokens)
}

/// The token a client (the agent, the `pgfleet` command) presents: the one in
/// `file` (`--token-file`), which must hold exactly one, or else `variable`
/// (the token itself, from `PGFLEET_TOKEN`); None when neither is given.
pub fn client_token(
    file: Option<&Path>,
    variable: Option<String>,
) -> Result<Option<Token>, SettingsError> {
    match file {
        Some(path) => {
            let mut tokens = read_tokens("token_file", path)?;
            if tokens.len() > 1 {
                return Err(SettingsError::Invalid {
                    key: "token_file",
                    message: format!("{} holds more than one token", path.display()),
                });
            }
            Ok(tokens.pop())
        }
        None => variable.map(|t| Token::new("token", &t)).transpose(),
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves_and_never_show() {
        let t = Token::new("token", "  0123456789abcdef0123  ").unwrap();
        assert!(t.matches(b"0123456789abcdef0123"));
        assert!(!t.matches(b"0123456789abcdef012"));
        assert!(!t.matches(b"0123456789abcdef01234"));
        assert!(!t.matches(b"1123456789abcdef0123"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(…)");
        assert!(Token::new("token", "short").is_err());
        assert!(Token::new("token", "0123456789 abcdef0123").is_err());
        assert!(
            Token::new("token", "0123456789abcdef0123é").is_err(),
            "it must fit a header"
        );
    }

    #[test]
    fn a_tokens_file_skips_comments_and_must_hold_one() {
        let dir = std::env::temp_dir().join(format!("pgfleet-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(
            &path,
            "# agents of eu1\n0123456789abcdef0123\n\nfedcba9876543210fedc\n",
        )
        .unwrap();
        assert_eq!(read_tokens("tokens_file", &path).unwrap().len(), 2);
        std::fs::write(&path, "# none yet\n").unwrap();
        let e = read_tokens("tokens_file", &path).unwrap_err().to_string();
        assert!(e.contains("holds no token"), "{e}");
        let e = read_tokens("tokens_file", &dir.join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
