//! Bearer tokens at the collector. Agents present an ingest token
//! (`--tokens-file`); readers of the fleet (the Query API and `Watch`)
//! present a read token (`--read-tokens-file`); Prometheus may present a
//! `/metrics` token (`--metrics-token-file`). One kind never grants another.
//! A presented token is compared with every known one, each in constant
//! time, so the time taken says nothing of which one nearly matched; no token
//! is ever logged. Health checking and reflection stay open.

use std::sync::Arc;

use pgfleet_common::settings::Token;
use tonic::{Request, Status};

/// What a request may do with a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Stream snapshots (an agent).
    Ingest,
    /// Read the fleet: the Query API and `Watch`.
    Read,
    /// Scrape `/metrics`.
    Metrics,
}

impl Access {
    /// What to set, for the one-line refusal.
    fn hint(self) -> &'static str {
        match self {
            Access::Ingest => "give the agent --token-file or PGFLEET_TOKEN",
            Access::Read => {
                "give pgfleet --token-file or PGFLEET_TOKEN a read token (one of the collector's --read-tokens-file)"
            }
            Access::Metrics => {
                "give Prometheus `authorization: {credentials_file: …}` with a token of the collector's --metrics-token-file"
            }
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No `authorization: Bearer …` at all.
    #[error("this collector requires a bearer token: {0}")]
    Missing(&'static str),
    /// A token, but not one of this kind.
    #[error("the bearer token is not one this collector accepts{0}")]
    Wrong(&'static str),
}

impl From<Refused> for Status {
    fn from(r: Refused) -> Status {
        Status::unauthenticated(r.to_string())
    }
}

/// The collector's tokens, by what they grant.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Ingest tokens; empty: any agent may stream.
    pub ingest: Arc<Vec<Token>>,
    /// Read tokens; empty: anyone who reaches the collector may read.
    pub read: Arc<Vec<Token>>,
    /// `/metrics` tokens; empty: anyone may scrape.
    pub metrics: Arc<Vec<Token>>,
}

impl Tokens {
    /// The tokens that grant `access`.
    fn of(&self, access: Access) -> &[Token] {
        match access {
            Access::Ingest => &self.ingest,
            Access::Read => &self.read,
            Access::Metrics => &self.metrics,
        }
    }

    /// Checks `authorization` (the header's value, if any) for `access`.
    pub fn check(&self, access: Access, authorization: Option<&[u8]>) -> Result<(), Refused> {
        let tokens = self.of(access);
        if tokens.is_empty() {
            return Ok(());
        }
        let Some(value) = authorization else {
            return Err(Refused::Missing(access.hint()));
        };
        let presented = value.strip_prefix(b"Bearer ").unwrap_or(&[]);
        if any_matches(tokens, presented) {
            return Ok(());
        }
        // Say when a token of another kind was used: an operator who gave an
        // agent's token to pgfleet learns what to change. (Whoever presents
        // it holds it already.)
        let other = match access {
            Access::Ingest if any_matches(&self.read, presented) => {
                ": it is a read token, and agents need one of --tokens-file"
            }
            Access::Read if any_matches(&self.ingest, presented) => {
                ": it is an agent's ingest token, and reading needs one of --read-tokens-file"
            }
            _ => "",
        };
        Err(Refused::Wrong(other))
    }

    /// A gRPC interceptor that lets through only requests with a token that
    /// grants `access`.
    pub fn interceptor(&self, access: Access) -> Interceptor {
        Interceptor {
            tokens: self.clone(),
            access,
        }
    }
}

/// Whether `presented` is one of `tokens`, comparing with every one of them.
fn any_matches(tokens: &[Token], presented: &[u8]) -> bool {
    tokens
        .iter()
        .fold(false, |found, t| t.matches(presented) | found)
}

/// Checks each gRPC request's bearer token before its handler runs.
#[derive(Debug, Clone)]
pub struct Interceptor {
    tokens: Tokens,
    access: Access,
}

impl tonic::service::Interceptor for Interceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.tokens.check(self.access, authorization)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Token {
        Token::new("test", text).unwrap()
    }

    #[test]
    fn each_kind_of_token_grants_its_own_access_only() {
        let tokens = Tokens {
            ingest: Arc::new(vec![token("ingest-token-0123456789")]),
            read: Arc::new(vec![token("read-token-0123456789ab")]),
            metrics: Arc::default(),
        };
        let bearer = |t: &str| format!("Bearer {t}");
        assert_eq!(
            tokens.check(
                Access::Read,
                Some(bearer("read-token-0123456789ab").as_bytes())
            ),
            Ok(())
        );
        let e = tokens
            .check(
                Access::Read,
                Some(bearer("ingest-token-0123456789").as_bytes()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("--read-tokens-file"), "{e}");
        let e = tokens
            .check(
                Access::Ingest,
                Some(bearer("read-token-0123456789ab").as_bytes()),
            )
            .unwrap_err();
        assert!(e.to_string().contains("it is a read token"), "{e}");
        let e = tokens.check(Access::Read, None).unwrap_err();
        assert!(e.to_string().contains("pgfleet --token-file"), "{e}");
        // Without "Bearer ", and a wrong one.
        for presented in ["read-token-0123456789ab", "Bearer read-token-0123456789aX"] {
            assert_eq!(
                tokens.check(Access::Read, Some(presented.as_bytes())),
                Err(Refused::Wrong(""))
            );
        }
        // No metrics tokens: anyone may scrape.
        assert_eq!(tokens.check(Access::Metrics, None), Ok(()));
    }
}
