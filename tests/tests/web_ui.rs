//! The web UI in a real browser: headless Chromium, driven over WebDriver
//! (chromedriver, through fantoccini), against a real collector with read
//! tokens on and two agents on real PostgreSQL.
//!
//! Screenshots of each page at 1280×800 and 390×844 are written under
//! `target/web-ui/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::actions::InputSource;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use pgfleet_cli::sandbox::TempCluster;
use pgfleet_tests::{
    agent_in_dc, collector_with_read_token, free_port, http_get, metric, stored, wait_for,
};
use serde_json::{Value, json};

const READ: &str = "read-token-for-the-web-ui-012345";

/// chromedriver on a free port, killed when dropped with the Chromium it
/// started (a failed test does not close its sessions, and an orphaned
/// Chromium would go on using the CPU under the tests that follow).
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Its children, the browsers, first: each takes its own processes
        // with it.
        let _ = Command::new("pkill")
            .arg("-P")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(names: &[&str]) -> Option<PathBuf> {
    names.iter().find_map(|n| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

async fn driver() -> Driver {
    let binary = which(&["chromedriver"]).unwrap_or_else(|| {
        panic!(
            "chromedriver is not installed: apt-get install chromium chromium-driver (.ci/run does)"
        )
    });
    let port = free_port().expect("a free port");
    let child = Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    wait_for(
        "chromedriver to listen",
        Duration::from_secs(20),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    driver
}

/// A headless Chromium session of `width`×`height`, keeping the console.
async fn browser(driver: &Driver, width: u32, height: u32) -> Client {
    let chromium = which(&["chromium", "chromium-browser", "google-chrome"])
        .expect("chromium is not installed: apt-get install chromium (.ci/run does)");
    let mut caps = serde_json::Map::new();
    let mut options = json!({
        "binary": chromium,
        "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            format!("--window-size={width},{height}"),
        ],
    });
    if width < 500 {
        // Narrower than a Chromium window may be: a phone's screen.
        options["mobileEmulation"] =
            json!({ "deviceMetrics": { "width": width, "height": height, "pixelRatio": 1.0 } });
    }
    caps.insert("goog:chromeOptions".into(), options);
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// chromedriver's browser log (its console), since it was last read.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// The console's errors since last asked.
async fn console_errors(c: &Client) -> Vec<String> {
    let log = c.issue_cmd(BrowserLog).await.expect("the browser log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Writes a screenshot under target/web-ui/ and checks that it is not blank.
async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/web-ui");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(&png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    let step = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        pixels[..info.buffer_size()].chunks(step).collect();
    assert!(
        colours.len() > 20,
        "{name}.png is blank: {} colours",
        colours.len()
    );
}

async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element `css` holds `wanted`.
async fn wait_text(c: &Client, css: &str, wanted: &str, limit: Duration) {
    wait_for(&format!("{css} to show {wanted:?}"), limit, || async {
        let text = text_of(c, css).await;
        if text.contains(wanted) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
}

/// Opens `base`, which asks for the read token, and gives it.
async fn sign_in(c: &Client, base: &str) {
    c.goto(base).await.unwrap();
    let input = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("dialog[open] #token"))
        .await
        .expect("the page asks for a token");
    input.send_keys(READ).await.unwrap();
    c.find(Locator::Css("#signin-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_the_fleet_a_server_its_load_and_its_past_sessions() {
    pgfleet_tests::init_logs();
    let driver = driver().await;
    let cluster = TempCluster::start().await.unwrap();
    let collector = collector_with_read_token(&cluster, READ).await;
    let http = collector.http_addr.unwrap().to_string();
    let base = format!("http://{http}");
    // A two-dc fleet: two servers (the same PostgreSQL, watched twice).
    let eu = agent_in_dc(&collector, &cluster, "db-eu", "eu1");
    let us = agent_in_dc(&collector, &cluster, "db-us", "us1");

    // Both streaming, with some history kept, before the sessions start: an
    // instant is shown from the history at or before it.
    wait_for("both servers up", Duration::from_secs(30), || async {
        let (_, body) = http_get(&http, "/api/v1/fleet", Some(&format!("Bearer {READ}"))).await?;
        if body.contains("\"servers_up\":2") {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // A session that sleeps throughout, and one that sleeps 25 s and goes.
    let sleeper = cluster.connect("ui-sleeper").await.unwrap();
    let sleeping = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(90)").await });
    let gone = cluster.connect("ui-gone").await.unwrap();
    gone.simple_query("SELECT pg_sleep(25)").await.unwrap();
    drop(gone);

    // The pages take the token once, then show the fleet.
    let c = browser(&driver, 1280, 800).await;
    sign_in(&c, &base).await;
    wait_text(&c, "#fleet", "db-eu", Duration::from_secs(20)).await;
    wait_text(&c, "#fleet", "db-us", Duration::from_secs(20)).await;
    let fleet = text_of(&c, "#fleet").await;
    assert!(
        fleet.contains("dc=eu1") && fleet.contains("dc=us1"),
        "{fleet}"
    );
    screenshot(&c, "fleet-1280x800").await;

    // A server: load on Timeout:PgSleep, the sleeping statement on top.
    c.goto(&format!("{base}/servers/db-eu?range=15m"))
        .await
        .unwrap();
    wait_text(
        &c,
        "#load-chart",
        "Timeout:PgSleep",
        Duration::from_secs(30),
    )
    .await;
    wait_text(&c, "#top-queries", "pg_sleep", Duration::from_secs(30)).await;
    wait_text(&c, "#sessions", "ui-sleeper", Duration::from_secs(30)).await;
    assert!(!text_of(&c, "#sessions").await.contains("ui-gone"));
    // The host's CPUs are a line on the chart: the agent is on the
    // server's host, so it knows them, and the API says how many.
    let (_, servers) = http_get(&http, "/api/v1/servers", Some(&format!("Bearer {READ}")))
        .await
        .unwrap();
    let servers: Value = serde_json::from_str(&servers).unwrap();
    let cpus = servers["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server_id"] == "db-eu")
        .and_then(|s| s["info"]["cpus"].as_u64())
        .unwrap_or(0);
    assert!(cpus > 0, "{servers}");
    wait_text(
        &c,
        "#load-chart",
        &format!("CPUs ({cpus})"),
        Duration::from_secs(10),
    )
    .await;
    // The pool queue over time: the agent's own pool waiting, and the
    // server's slots, each a lane on the range's time axis.
    wait_text(
        &c,
        "#pool-timeline",
        "server slots used: slots",
        Duration::from_secs(30),
    )
    .await;
    wait_text(
        &c,
        "#pool-timeline",
        "waiting for a connection: pgfleet-agent",
        Duration::from_secs(30),
    )
    .await;
    screenshot(&c, "server-1280x800").await;
    c.execute(
        "document.getElementById('pool-timeline').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    screenshot(&c, "server-pools-1280x800").await;
    c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();

    // A query: from top queries to its page, with its text, its load on
    // each server (both watch the same PostgreSQL) and its statistics.
    c.find(Locator::XPath(
        "//table[@id='top-queries']//tr[contains(., 'pg_sleep')]//a[starts-with(@href, '/queries/')]",
    ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "#query-text", "pg_sleep", Duration::from_secs(20)).await;
    wait_text(&c, "#query-chart", "db-eu", Duration::from_secs(20)).await;
    wait_text(&c, "#query-chart", "db-us", Duration::from_secs(20)).await;
    let url = c.current_url().await.unwrap();
    assert!(url.path().starts_with("/queries/"), "{url}");
    screenshot(&c, "query-1280x800").await;
    c.back().await.unwrap();
    wait_text(&c, "#top-queries", "pg_sleep", Duration::from_secs(20)).await;

    // Clicking the chart where the gone session ran shows it, though it is
    // gone now: stacked by application, at the middle of its full steps.
    c.goto(&format!("{base}/servers/db-eu?range=15m&stack=application"))
        .await
        .unwrap();
    wait_text(&c, "#load-chart", "ui-gone", Duration::from_secs(30)).await;
    let point: Value = c
        .execute(
            r#"const u = document.getElementById('load-chart').uplot;
               const i = u.series.findIndex((s) => s.label === 'ui-gone');
               const raw = u.rawValues[i];
               const j = raw.findIndex((v) => v >= 0.99);
               if (j < 0) return null;
               const r = u.over.getBoundingClientRect();
               const mid = u.data[0][j] + (u.data[0][1] - u.data[0][0]) / 2;
               return { x: r.left + u.valToPos(mid, 'x'), y: r.top + r.height / 2 };"#,
            vec![],
        )
        .await
        .unwrap();
    assert!(
        point.is_object(),
        "no step where the gone session ran throughout"
    );
    let (x, y) = (point["x"].as_f64().unwrap(), point["y"].as_f64().unwrap());
    let actions = fantoccini::actions::MouseActions::new("mouse".into())
        .then(fantoccini::actions::PointerAction::MoveTo {
            duration: None,
            x: x.round(),
            y: y.round(),
        })
        .then(fantoccini::actions::PointerAction::Down {
            button: fantoccini::actions::MOUSE_BUTTON_LEFT,
        })
        .then(fantoccini::actions::PointerAction::Up {
            button: fantoccini::actions::MOUSE_BUTTON_LEFT,
        });
    c.perform_actions(actions).await.unwrap();
    wait_text(&c, "#sessions", "ui-gone", Duration::from_secs(20)).await;
    let url = c.current_url().await.unwrap();
    assert!(url.query().unwrap_or_default().contains("at="), "{url}");
    let errors = console_errors(&c).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    c.close().await.unwrap();

    // At phone width.
    let phone = browser(&driver, 390, 844).await;
    sign_in(&phone, &base).await;
    wait_text(&phone, "#fleet", "db-us", Duration::from_secs(20)).await;
    screenshot(&phone, "fleet-390x844").await;
    phone
        .goto(&format!("{base}/servers/db-us?range=15m"))
        .await
        .unwrap();
    wait_text(
        &phone,
        "#load-chart",
        "Timeout:PgSleep",
        Duration::from_secs(30),
    )
    .await;
    screenshot(&phone, "server-390x844").await;
    let errors = console_errors(&phone).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    phone.close().await.unwrap();

    // The assets are the collector's own, and small.
    let (head, body) = http_get(&http, "/ui/app.js", None).await.unwrap();
    assert!(head.contains("200") && body.contains("pgfleet"), "{head}");

    sleeping.abort();
    eu.stop().await;
    us.stop().await;
    collector.stop().await;
    cluster.destroy().await;
}

/// The query every session of the stored load runs.
const FINGERPRINT: u64 = 0x0123_4567_89ab_cdef;

/// A page left stops its reads, and the collector stops reading for it: a
/// fleet's week of one query takes minutes, and the store reads with three
/// connections, so reads for pages nobody looks at would hold every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_left_stops_its_reads_on_the_collector() {
    pgfleet_tests::init_logs();
    let driver = driver().await;
    let dir = std::env::temp_dir().join(format!("pgfleet-ui-reads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let servers = pgfleet_tests::env_usize("PGFLEET_TEST_UI_READ_SERVERS", 60);
    let written = std::time::Instant::now();
    let end = pgfleet_proto::time::now_micros();
    let day = stored::load_of(end - end.rem_euclid(60_000_000), 24, |_| FINGERPRINT);
    let fleet: Vec<(String, &[_])> = (0..servers)
        .map(|i| (format!("db-{i:03}"), &day[..]))
        .collect();
    stored::write_load(&dir, &fleet).await;
    let on_disk = || {
        ["pgfleet.sqlite", "pgfleet.sqlite-wal"]
            .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
            .iter()
            .sum::<u64>() as f64
    };
    // The file alone: its log may still be there, to be checkpointed into
    // it and removed once the writer that wrote it closes (after this).
    let written_bytes = std::fs::metadata(dir.join("pgfleet.sqlite")).unwrap().len() as f64;
    let mut config =
        pgfleet_collector::config::CollectorConfig::new(([127, 0, 0, 1], 0).into(), dir.clone());
    config.http_listen = Some(([127, 0, 0, 1], 0).into());
    config.read_tokens =
        vec![pgfleet_common::settings::Token::new("read_tokens_file", READ).unwrap()];
    let collector = pgfleet_collector::server::start(config).await.unwrap();
    let http = collector.http_addr.unwrap().to_string();
    let base = format!("http://{http}");
    let page = format!("{base}/queries/{FINGERPRINT:016x}?range=24h");

    // The question the query's page asks, asked whole: how long it takes.
    let asked = std::time::Instant::now();
    let (head, body) = http_get(
        &http,
        &format!(
            "/api/v1/load?range=24h&group_by=server&matchers=query%3D%22{FINGERPRINT:016x}%22"
        ),
        Some(&format!("Bearer {READ}")),
    )
    .await
    .unwrap();
    let whole = asked.elapsed();
    eprintln!(
        "{servers} servers' day written in {:?}, read whole in {whole:?}: {head}",
        written.elapsed() - whole
    );
    assert!(head.contains("200"), "{head}\n{body}");
    assert!(body.contains("db-000"), "{body}");
    assert_eq!(
        metric(&http, "pgfleet_collector_store_reads_abandoned_total").await,
        Ok(0.0)
    );
    // The store's size on disk, as its writer read it when it started: the
    // day just written, no more than the file holds now.
    let bytes = metric(&http, "pgfleet_collector_store_bytes")
        .await
        .unwrap();
    assert!(
        written_bytes >= 1e6 && (written_bytes..=on_disk()).contains(&bytes),
        "{bytes} bytes said; {written_bytes} written, {} now",
        on_disk()
    );

    let c = browser(&driver, 1280, 800).await;
    sign_in(&c, &base).await;
    wait_text(&c, "#fleet", "db-000", Duration::from_secs(20)).await;
    c.goto(&page).await.unwrap();
    wait_text(&c, "#query-chart", "Reading", Duration::from_secs(10)).await;
    wait_for(
        "the page's reads under way",
        Duration::from_secs(10),
        || async {
            match metric(&http, "pgfleet_collector_store_reads").await? {
                n if n >= 1.0 => Ok(()),
                n => Err(format!("{n} reads under way")),
            }
        },
    )
    .await;
    // Left for the fleet, within the page (no reload).
    let left = std::time::Instant::now();
    c.find(Locator::Css("#crumbs a[href='/']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // However long its reads would have gone on: only a read stopped early
    // is counted abandoned.
    wait_for(
        "the page's reads stopped",
        Duration::from_secs(30),
        || async {
            let abandoned = metric(&http, "pgfleet_collector_store_reads_abandoned_total").await?;
            let running = metric(&http, "pgfleet_collector_store_reads").await?;
            if abandoned >= 1.0 && running == 0.0 {
                Ok(())
            } else {
                Err(format!("{running} reads under way, {abandoned} abandoned"))
            }
        },
    )
    .await;
    eprintln!(
        "the reads stopped {:?} after the page was left",
        left.elapsed()
    );
    wait_text(&c, "#fleet", "db-000", Duration::from_secs(20)).await;
    let errors = console_errors(&c).await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    c.close().await.unwrap();
    collector.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
