//! `GetChurn`: sessions started and ended, with what PostgreSQL counted.

use foldhash::{HashMap, HashMapExt};

use pgfleet_proto::time::Micros;
use pgfleet_proto::v1;

use super::{Scope, whole_range};
use crate::load::churn::{ChurnCount, ChurnKey};
use crate::load::{Bucket, Churn, Dim, shown};
use pgfleet_proto::model::ArcStr;

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
            rows: HashMap::new(),
            established: HashMap::new(),
            churn: Churn::default(),
            covered: HashMap::new(),
        }
    }
}

/// Churn added up as its buckets are read (see [`ChurnPlan::sum`]): a row
/// per key, however many buckets name it.
#[derive(Debug)]
pub struct ChurnSum {
    plan: ChurnPlan,
    rows: HashMap<ChurnKey, ChurnCount>,
    /// Sessions established, by database.
    established: HashMap<ArcStr, u64>,
    /// The lifetimes (its rows and sessions established are above).
    churn: Churn,
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
        crate::load::churn::add_rows(&mut self.rows, &b.churn.rows);
        for (database, n) in &b.churn.established {
            match self.established.get_mut(database) {
                Some(sum) => *sum += n,
                None => {
                    self.established.insert(database.clone(), *n);
                }
            }
        }
        self.churn.absorb_lifetimes(&b.churn);
    }

    /// The answer.
    pub fn answer(self) -> v1::GetChurnResponse {
        let ChurnSum {
            plan,
            rows,
            established,
            mut churn,
            covered,
        } = self;
        let keep = |k: &ChurnKey| {
            plan.scope.tuples.iter().all(|(d, m)| {
                let value = match d {
                    Dim::User => &k.user,
                    Dim::Application => &k.application,
                    _ => &k.client,
                };
                m.matches(Some(shown(value)))
            })
        };
        // Each database's established sessions shared out over its rows in
        // proportion to the starts the samples saw (all of them, before a
        // filter or the bound sums some into other); what no sample saw, when
        // no filter narrows the rows, is a row of its own.
        let mut seen: HashMap<&str, u64> = HashMap::new();
        for (k, c) in &rows {
            *seen.entry(&k.database).or_default() += c.started;
        }
        let mut factor: HashMap<String, f64> = HashMap::new();
        let mut unseen: Vec<(String, u64)> = Vec::new();
        for (database, &n) in &established {
            let saw = seen.get(&**database).copied().unwrap_or(0);
            if saw > 0 && n > saw {
                factor.insert(database.to_string(), n as f64 / saw as f64);
            } else if saw == 0 && n > 0 && plan.scope.tuples.is_empty() {
                unseen.push((database.to_string(), n));
            }
        }
        unseen.sort();
        // The rows the filters take, the top of them kept.
        churn.rows = rows.into_iter().filter(|(k, _)| keep(k)).collect();
        churn.bound();
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
        let scaled = |n: u64, database: &str| -> u64 {
            (n as f64 * factor.get(database).copied().unwrap_or(1.0)).round() as u64
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
                        c.lifetime_us as f64 / 1e6 / c.ended as f64
                    } else {
                        0.0
                    },
                    seen_started: c.started,
                    seen_ended: c.ended,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::COARSE_US;
    use pgfleet_proto::time;

    #[test]
    fn churn_is_summed_per_key_as_its_buckets_come_past_what_a_minute_holds() {
        let now = 1_800_000_000_000_000 - 1_800_000_000_000_000 % COARSE_US;
        let req = v1::GetChurnRequest {
            start: Some(time::timestamp(now - 10 * COARSE_US)),
            end: Some(time::timestamp(now)),
            ..Default::default()
        };
        let plan = ChurnPlan::new(&req, now).unwrap();
        let key = |app: &str| ChurnKey {
            database: "orders".into(),
            application: app.into(),
            user: "app".into(),
            client: "10.0.0.7".into(),
        };
        let mut sum = plan.sum();
        // Ten minutes of two servers, each minute the most a stored
        // minute's count holds for "web", and one for "batch".
        for minute in 0..10 {
            for server in ["a", "b"] {
                let mut b = Bucket::holding(now - (10 - minute) * COARSE_US, COARSE_US);
                b.samples = 60;
                b.covered_us = 60_000_000;
                b.churn.rows = vec![
                    (
                        key("web"),
                        ChurnCount {
                            started: u64::from(u32::MAX),
                            ended: 1,
                            lifetime_us: 1_000_000,
                        },
                    ),
                    (
                        key("batch"),
                        ChurnCount {
                            started: 1,
                            ended: 1,
                            lifetime_us: 2_000_000,
                        },
                    ),
                ];
                b.churn.established = vec![("orders".into(), 5)];
                sum.add(server, &b);
            }
        }
        assert_eq!(sum.rows.len(), 2, "a row per key, not per bucket");
        let r = sum.answer();
        let web = r.rows.iter().find(|r| r.application == "web").unwrap();
        assert_eq!(web.seen_started, 20 * u64::from(u32::MAX));
        assert_eq!((web.seen_ended, web.lifetime_mean), (20, 1.0));
        let batch = r.rows.iter().find(|r| r.application == "batch").unwrap();
        assert_eq!((batch.seen_started, batch.lifetime_mean), (20, 2.0));
        assert_eq!(r.seconds, 600.0, "each server's ten minutes");
    }
}
