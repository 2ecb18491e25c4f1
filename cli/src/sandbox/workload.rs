//! Varied activity for the demo: a long report, busy short queries, an idle
//! session, one idle in a transaction holding a row lock, and one waiting on it.

use tokio::task::JoinHandle;

use super::{SandboxError, TempCluster};

/// The demo's sessions; dropping it ends them.
pub struct DemoWorkload {
    _clients: Vec<tokio_postgres::Client>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DemoWorkload {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DemoWorkload {
    /// Opens the sessions and sets each one going.
    pub async fn start(cluster: &TempCluster) -> Result<DemoWorkload, SandboxError> {
        let fail =
            |e: tokio_postgres::Error| SandboxError::Workload(pgfleet_common::error::chain(&e));
        let setup = cluster.connect("demo-setup").await.map_err(fail)?;
        setup
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, balance numeric NOT NULL);
                 INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 1000) g ON CONFLICT DO NOTHING;",
            )
            .await
            .map_err(fail)?;

        let mut tasks = Vec::new();
        let mut clients = vec![setup];

        // A report that runs for a long time.
        let report = cluster.connect("demo-report").await.map_err(fail)?;
        tasks.push(tokio::spawn(async move {
            let _ = report
                .simple_query("SELECT count(*), pg_sleep(3600) FROM accounts WHERE balance > 50")
                .await;
        }));

        // A web backend running short queries back to back.
        let web = cluster.connect("demo-web").await.map_err(fail)?;
        tasks.push(tokio::spawn(async move {
            loop {
                if web
                    .simple_query("SELECT balance, pg_sleep(0.4) FROM accounts WHERE id = 42")
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }));

        // A pooled connection doing nothing.
        let idle = cluster.connect("demo-idle").await.map_err(fail)?;
        idle.simple_query("SELECT 1").await.map_err(fail)?;
        clients.push(idle);

        // A batch job that took a row lock and forgot to commit.
        let batch = cluster.connect("demo-batch").await.map_err(fail)?;
        batch
            .batch_execute("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = 7;")
            .await
            .map_err(fail)?;
        clients.push(batch);

        // A checkout that needs the same row and waits for the lock.
        let checkout = cluster.connect("demo-checkout").await.map_err(fail)?;
        tasks.push(tokio::spawn(async move {
            let _ = checkout
                .simple_query("UPDATE accounts SET balance = balance - 10 WHERE id = 7")
                .await;
        }));

        // A tide of short queries, rising and falling over four minutes, so
        // that the load chart and the time slider have something to show:
        // worker k runs while the tide is above k.
        for k in 0..4u32 {
            let tide = cluster.connect("demo-tide").await.map_err(fail)?;
            tasks.push(tokio::spawn(async move {
                let started = std::time::Instant::now();
                loop {
                    let t = started.elapsed().as_secs_f64();
                    let level = 2.0 - 2.0 * (t * std::f64::consts::TAU / 240.0).cos();
                    if f64::from(k) >= level {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                    // Half asleep, half reading: waits of two kinds.
                    let query = if k % 2 == 0 {
                        "SELECT pg_sleep(0.8), count(*) FROM accounts"
                    } else {
                        "SELECT sum(a.balance) FROM accounts a, accounts b WHERE a.id % 97 = b.id % 89"
                    };
                    if tide.simple_query(query).await.is_err() {
                        break;
                    }
                }
            }));
        }

        Ok(DemoWorkload {
            _clients: clients,
            tasks,
        })
    }
}
