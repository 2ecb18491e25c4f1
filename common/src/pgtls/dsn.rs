//! Connection strings: the TLS settings taken out of a URL or a key/value
//! string, the rest left as it was for tokio-postgres.

/// The TLS settings a connection string or the environment gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub(super) mode: Option<String>,
    pub(super) root: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

impl Settings {
    pub(super) fn set(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a
/// connection string; the rest goes to tokio-postgres as it was.
pub(super) fn take_tls(text: &str) -> Result<(String, Settings), String> {
    let mut settings = Settings::default();
    if let Some((scheme, rest)) = ["postgresql://", "postgres://"]
        .iter()
        .find_map(|s| text.strip_prefix(s).map(|r| (*s, r)))
    {
        let Some((base, query)) = rest.split_once('?') else {
            return Ok((text.to_owned(), settings));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // Only the TLS settings' values are decoded here: the others
            // (a password, say) go on as they are, and never into a message.
            let key = percent_decode(k).unwrap_or_default();
            if matches!(
                key.as_str(),
                "sslmode" | "sslrootcert" | "sslcert" | "sslkey"
            ) {
                let value = percent_decode(v).map_err(|_| format!("{key} has a bad %-escape"))?;
                settings.set(&key, value);
            } else {
                kept.push(pair);
            }
        }
        let mut out = format!("{scheme}{base}");
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        return Ok((out, settings));
    }
    // key = value pairs; a value may be 'quoted', with \ escapes.
    let mut kept = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(format!("{key:?} has no value; write key=value pairs"));
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|(_, c)| *c == '\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err("a value ends with a lone backslash".to_owned()),
                    },
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("the value of {key:?} has no closing quote")),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(text.len(), |(i, _)| *i);
        if !settings.set(&key, value) {
            kept.push(&text[start..end]);
        }
    }
    Ok((kept.join(" "), settings))
}

/// Decodes a URL's %XX escapes.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{text:?} has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} is not UTF-8 once decoded"))
}
