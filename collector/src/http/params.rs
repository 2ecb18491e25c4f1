//! A JSON API request's query string, read into a Query RPC's request.
//!
//! Parameters are named as the request's proto fields are (`server_id`,
//! `group_by`, `order_by`, `limit`, …), with these forms:
//! - times (`start`, `end`, `at`) in RFC 3339 (`2026-11-24T03:12:00Z`);
//! - durations (`step`, `min_duration`) as `90s`, `1m`, `1h`;
//! - `range=1h` for `start`, an hour before `end` (or now);
//! - repeated fields (`matchers`, `group_by` of QueryMetrics) by giving the
//!   parameter again; `match` is `matchers`' short name;
//! - label maps as `label=dc=eu1`, again for each label.
//!
//! A parameter the endpoint does not take, or given twice where it is
//! single, is refused, naming what it takes.

use std::collections::BTreeMap;
use std::time::Duration;

use pgfleet_proto::time::{self, Micros, now_micros};
use tonic::Status;

/// A request's query string, as name and value pairs in order.
pub struct Params {
    pairs: Vec<(String, String)>,
    /// What the endpoint takes, for the refusal of anything else.
    accepted: &'static [&'static str],
}

/// The longest `range` asked for.
const MAX_RANGE: Duration = Duration::from_secs(400 * 86_400);

impl Params {
    /// `query` (the part after `?`) for an endpoint that takes `accepted`.
    pub fn parse(query: Option<&str>, accepted: &'static [&'static str]) -> Result<Params, Status> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| {
                let k = if k == "match" { "matchers".into() } else { k };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        if let Some((unknown, _)) = pairs.iter().find(|(k, _)| !accepted.contains(&k.as_str())) {
            return Err(Status::invalid_argument(format!(
                "unknown parameter {unknown:?}; this endpoint takes {}",
                if accepted.is_empty() {
                    "none".to_owned()
                } else {
                    accepted.join(", ")
                }
            )));
        }
        Ok(Params { pairs, accepted })
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        debug_assert!(self.accepted.contains(&name), "{name} is not accepted");
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of `name`, given at most once.
    pub fn one(&self, name: &str) -> Result<Option<&str>, Status> {
        let mut values = self.pairs.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(Status::invalid_argument(format!(
                "{name} is given more than once; give it once"
            )));
        }
        Ok(first)
    }

    /// The value of `name`, or empty.
    pub fn text(&self, name: &str) -> Result<String, Status> {
        Ok(self.one(name)?.unwrap_or_default().to_owned())
    }

    /// `name` as a whole number (0 when absent).
    pub fn number(&self, name: &str) -> Result<u32, Status> {
        match self.one(name)? {
            None => Ok(0),
            Some(v) => v.trim().parse().map_err(|_| {
                Status::invalid_argument(format!("{name}={v:?} is not a whole number"))
            }),
        }
    }

    /// `name` as true or false (false when absent).
    pub fn flag(&self, name: &str) -> Result<bool, Status> {
        match self.one(name)? {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(v) => Err(Status::invalid_argument(format!(
                "{name}={v:?} is neither true nor false"
            ))),
        }
    }

    /// `name` as an instant.
    pub fn time(&self, name: &str) -> Result<Option<prost_types::Timestamp>, Status> {
        self.one(name)?
            .map(|v| instant(name, v).map(time::timestamp))
            .transpose()
    }

    /// `name` as a duration.
    pub fn duration(&self, name: &str) -> Result<Option<prost_types::Duration>, Status> {
        self.one(name)?
            .map(|v| {
                let d = humantime::parse_duration(v.trim()).map_err(|e| {
                    Status::invalid_argument(format!(
                        "{name}={v:?} is not a duration like 90s, 1m or 1h ({e})"
                    ))
                })?;
                Ok(time::duration(d.as_micros().min(i64::MAX as u128) as i64))
            })
            .transpose()
    }

    /// `start` and `end`, or `range` before `end` (or now).
    pub fn range(
        &self,
    ) -> Result<
        (
            Option<prost_types::Timestamp>,
            Option<prost_types::Timestamp>,
        ),
        Status,
    > {
        let end = self.time("end")?;
        let start = match (self.time("start")?, self.one("range")?) {
            (Some(_), Some(_)) => {
                return Err(Status::invalid_argument("give start or range, not both"));
            }
            (Some(start), None) => Some(start),
            (None, Some(range)) => {
                let d = humantime::parse_duration(range.trim())
                    .ok()
                    .filter(|d| *d > Duration::ZERO && *d <= MAX_RANGE)
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "range={range:?} is not a duration like 15m, 1h or 7d of at most 400 days"
                        ))
                    })?;
                let end = end
                    .as_ref()
                    .map(time::timestamp_micros)
                    .unwrap_or_else(now_micros);
                Some(time::timestamp(end - d.as_micros() as Micros))
            }
            (None, None) => None,
        };
        Ok((start, end))
    }

    /// Every `label=name=value`, as a map.
    pub fn labels(&self) -> Result<std::collections::HashMap<String, String>, Status> {
        let mut labels = BTreeMap::new();
        for item in self.all("label") {
            let Some((name, value)) = item.split_once('=') else {
                return Err(Status::invalid_argument(format!(
                    "label={item:?} is not name=value, like label=dc=eu1"
                )));
            };
            labels.insert(name.to_owned(), value.to_owned());
        }
        Ok(labels.into_iter().collect())
    }
}

/// An instant in RFC 3339.
fn instant(name: &str, text: &str) -> Result<Micros, Status> {
    humantime::parse_rfc3339_weak(text.trim())
        .map(time::system_time_to_micros)
        .map_err(|_| {
            Status::invalid_argument(format!(
                "{name}={text:?} is not a time like 2026-11-24T03:12:00Z"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_read_as_the_request_fields_they_name() {
        let p = Params::parse(
            Some("range=1h&end=2026-11-24T03%3A12%3A00Z&match=dc%3D%22eu1%22&match=user%3Dapp&label=dc=eu1&limit=5"),
            &["range", "start", "end", "matchers", "label", "limit"],
        )
        .unwrap();
        let (start, end) = p.range().unwrap();
        let end = time::timestamp_micros(&end.unwrap());
        assert_eq!(end - time::timestamp_micros(&start.unwrap()), 3_600_000_000);
        assert_eq!(p.all("matchers"), ["dc=\"eu1\"", "user=app"]);
        assert_eq!(p.labels().unwrap()["dc"], "eu1");
        assert_eq!(p.number("limit").unwrap(), 5);
    }

    #[test]
    fn bad_parameters_say_what_to_change() {
        let e = Params::parse(Some("rnage=1h"), &["range"]).err().unwrap();
        assert!(
            e.message().contains("\"rnage\"") && e.message().contains("takes range"),
            "{e}"
        );
        let p = Params::parse(Some("range=soon&limit=x&limit=2"), &["range", "limit"]).unwrap();
        assert!(p.range().unwrap_err().message().contains("15m"));
        assert!(p.number("limit").unwrap_err().message().contains("once"));
        let p = Params::parse(Some("at=yesterday"), &["at"]).unwrap();
        assert!(
            p.time("at")
                .unwrap_err()
                .message()
                .contains("2026-11-24T03:12:00Z")
        );
    }
}
