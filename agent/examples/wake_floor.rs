//! What waking once a second costs on this machine, before any sampling work:
//! the floor under the agent's CPU per sample.
//!
//! `cargo run --release -p pgfleet-agent --example wake_floor -- [postgres URL]`
//!
//! On the agent's runtime (tokio, current thread), for 30 ticks a second apart
//! each, it measures this thread's CPU per tick:
//! 1. a tokio interval that does nothing;
//! 2. the same, running `SELECT 1` on a connection to the URL, if one is given
//!    (the agent's cheapest possible read).

use std::time::Duration;

#[path = "../benches/support/cpu.rs"]
mod cpu;
use cpu::cpu;

const TICKS: u32 = 30;

async fn per_tick(mut work: impl AsyncFnMut()) -> Duration {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    let start = cpu();
    for _ in 0..TICKS {
        interval.tick().await;
        work().await;
    }
    (cpu() - start) / TICKS
}

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wake_floor: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        let idle = per_tick(async || {}).await;
        println!(
            "an idle tokio interval:           {:>7.1} µs CPU per tick",
            idle.as_secs_f64() * 1e6
        );
        let Some(url) = std::env::args().nth(1) else {
            println!("(give a postgres URL to measure SELECT 1 per tick too)");
            return;
        };
        let (client, connection) = match tokio_postgres::connect(&url, tokio_postgres::NoTls).await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("wake_floor: cannot connect: {e}");
                std::process::exit(1);
            }
        };
        tokio::spawn(connection);
        let statement = match client.prepare("SELECT 1").await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("wake_floor: {e}");
                std::process::exit(1);
            }
        };
        let query = per_tick(async || {
            if let Err(e) = client.query(&statement, &[]).await {
                eprintln!("wake_floor: {e}");
            }
        })
        .await;
        println!(
            "the same, with SELECT 1 per tick: {:>7.1} µs CPU per tick",
            query.as_secs_f64() * 1e6
        );
    });
}
