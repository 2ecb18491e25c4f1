//! `GetChurn`: sessions started and ended, with what PostgreSQL counted.

use std::collections::HashMap;

use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;

use super::{Scope, whole_range};
use crate::load::{Bucket, Dim, shown};

/// A checked `GetChurn` request.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    pub scope: Scope,
}

impl ChurnPlan {
    pub fn new(req: &v1::GetChurnRequest, now: Micros) -> Result<ChurnPlan, String> {
        let scope = whole_range(
            &req.server_id,
            &req.matchers,
            req.start.as_ref(),
            req.end.as_ref(),
            now,
        )?;
        if let Some((d, _)) = scope
            .tuples
            .iter()
            .find(|(d, _)| !matches!(d, Dim::User | Dim::Application | Dim::Client))
        {
            return Err(format!(
                "churn is kept by application, user and client; {} cannot select it",
                d.name()
            ));
        }
        Ok(ChurnPlan { scope })
    }

    /// An empty sum, to add the selected servers' buckets to as they are
    /// read.
    pub fn sum(&self) -> ChurnSum {
        ChurnSum {
            plan: self.clone(),
            churn: crate::load::Churn::default(),
            covered: HashMap::new(),
        }
    }
}

/// Churn added up as its buckets are read (see [`ChurnPlan::sum`]).
#[derive(Debug)]
pub struct ChurnSum {
    plan: ChurnPlan,
    churn: crate::load::Churn,
    /// Per server, the microseconds its buckets cover.
    covered: HashMap<String, i64>,
}

impl ChurnSum {
    pub fn add(&mut self, server_id: &str, b: &Bucket) {
        match self.covered.get_mut(server_id) {
            Some(c) => *c += b.covered_us,
            None => {
                self.covered.insert(server_id.to_owned(), b.covered_us);
            }
        }
        self.churn.absorb(&b.churn);
    }

    /// The answer.
    pub fn answer(self) -> v1::GetChurnResponse {
        let ChurnSum {
            plan,
            mut churn,
            covered,
        } = self;
        let keep = |k: &crate::load::churn::ChurnKey| {
            plan.scope.tuples.iter().all(|(d, m)| {
                let value = match d {
                    Dim::User => &k.user,
                    Dim::Application => &k.application,
                    _ => &k.client,
                };
                m.matches(Some(shown(value)))
            })
        };
        churn.bound();
        // Each database's established sessions shared out over its rows in
        // proportion to the starts the samples saw; what no sample saw, when
        // no filter narrows the rows, is a row of its own.
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for (k, c) in &churn.rows {
            *seen.entry(&k.database).or_default() += u64::from(c.started);
        }
        let mut factor: HashMap<String, f64> = HashMap::new();
        let mut unseen: Vec<(String, u64)> = Vec::new();
        for (database, n) in &churn.established {
            let saw = seen.get(&**database).copied().unwrap_or(0);
            let n = u64::from(*n);
            if saw > 0 && n > saw {
                factor.insert(database.to_string(), n as f64 / saw as f64);
            } else if saw == 0 && n > 0 && plan.scope.tuples.is_empty() {
                unseen.push((database.to_string(), n));
            }
        }
        churn.rows.retain(|(k, _)| keep(k));
        // A server's rate is over the seconds it was sampled; the fleet's
        // over their mean.
        let seconds = if covered.is_empty() {
            0.0
        } else {
            covered.values().sum::<i64>() as f64 / 1e6 / covered.len() as f64
        };
        let rate = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let scaled = |n: u32, database: &str| -> u64 {
            (f64::from(n) * factor.get(database).copied().unwrap_or(1.0)).round() as u64
        };
        let mut rows: Vec<v1::ChurnRow> = churn
            .rows
            .iter()
            .map(|(k, c)| {
                let (started, ended) =
                    (scaled(c.started, &k.database), scaled(c.ended, &k.database));
                v1::ChurnRow {
                    database: shown(&k.database).to_owned(),
                    application: shown(&k.application).to_owned(),
                    user: shown(&k.user).to_owned(),
                    client: shown(&k.client).to_owned(),
                    started,
                    ended,
                    started_per_second: rate(started),
                    ended_per_second: rate(ended),
                    lifetime_mean: if c.ended > 0 {
                        c.lifetime_us as f64 / 1e6 / f64::from(c.ended)
                    } else {
                        0.0
                    },
                    seen_started: u64::from(c.started),
                    seen_ended: u64::from(c.ended),
                }
            })
            .collect();
        for (database, n) in unseen {
            rows.push(v1::ChurnRow {
                database,
                application: "(between samples)".to_owned(),
                started: n,
                ended: n,
                started_per_second: rate(n),
                ended_per_second: rate(n),
                ..Default::default()
            });
        }
        rows.sort_by(|a, b| {
            (b.started + b.ended)
                .cmp(&(a.started + a.ended))
                .then(a.application.cmp(&b.application))
        });
        v1::GetChurnResponse {
            rows,
            seconds,
            lifetime_p50: churn.lifetime_quantile(0.5),
            lifetime_p90: churn.lifetime_quantile(0.9),
            lifetime_p99: churn.lifetime_quantile(0.99),
            lifetime_max: churn.lifetime_max_us as f64 / 1e6,
        }
    }
}
