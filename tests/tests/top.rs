//! `pgfleet top`, as a person sees it: run under tmux (80×24, and wider),
//! driven with send-keys and read with capture-pane.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pgfleet_tests::{fleet, wait_for, wait_for_status, workspace_binary};

/// A tmux session running one command in a pane, killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    /// `command` in an 80×24 pane.
    fn start(command: &str) -> Tmux {
        Self::sized(command, 80, 24)
    }

    /// `command` in a `width`×`height` pane.
    fn sized(command: &str, width: u16, height: u16) -> Tmux {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pgfleet-top-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux { name };
        // The pane stays after the command ends, so that what it printed last
        // can be read.
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.name,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
        tmux.run(&["set-option", "-t", &tmux.name, "remain-on-exit", "on"]);
        tmux.run(&["respawn-pane", "-k", "-t", &tmux.name, command]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux runs (the tests need the tmux package)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends keys, as tmux names them ("q", "Enter", "Escape", "F3").
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend(keys);
        self.run(&args);
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", &self.name])
    }

    /// Waits until the screen satisfies `check` (which says what is missing).
    async fn wait(
        &self,
        what: &str,
        limit: Duration,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> String {
        wait_for(what, limit, || {
            let screen = self.screen();
            let result = check(&screen).map(|_| screen.clone());
            async move { result.map_err(|missing| format!("{missing}; the screen:\n{screen}")) }
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .output();
    }
}

/// Ok when every one of `texts` is on the screen.
fn shows(screen: &str, texts: &[&str]) -> Result<(), String> {
    match texts.iter().find(|t| !screen.contains(*t)) {
        Some(t) => Err(format!("{t:?} is not on the screen")),
        None => Ok(()),
    }
}

/// The lines of the sessions table: those that start with a server_id.
fn rows<'a>(screen: &'a str, prefix: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|l| l.trim_start().starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_offers_top_and_its_screens_show_what_a_dba_needs() {
    let pgfleet = workspace_binary("pgfleet");
    let tmux = Tmux::start(&format!("{} demo --duration 2s", pgfleet.display()));
    let limit = Duration::from_secs(120);
    tmux.wait("the demo's offer of pgfleet top", limit, |s| {
        shows(s, &["Open `pgfleet top` on this fleet now?"])
    })
    .await;
    tmux.keys(&["y", "Enter"]);

    // The header adds the fleet up per data centre; the running screen has
    // both servers' queries, the longest first.
    let screen = tmux
        .wait("top's running screen", Duration::from_secs(30), |s| {
            shows(
                s,
                &[
                    "pgfleet top",
                    "2 servers: 2 up",
                    "demo-dc1",
                    "demo-dc2",
                    "F1 running",
                ],
            )?;
            if rows(s, "demo-db-").len() < 4 {
                return Err("fewer than 4 running sessions".into());
            }
            shows(s, &["Lock:trans"])
        })
        .await;
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    assert!(
        !screen.contains("idle xact"),
        "only running sessions: {screen}"
    );

    // F3: the blocking trees, the blocker idle in its transaction and its
    // waiter indented below it.
    tmux.keys(&["F3"]);
    tmux.wait("the blocking screen", Duration::from_secs(15), |s| {
        shows(s, &["idle xact", "  demo-db-"])?;
        let roots = rows(s, "demo-db-")
            .iter()
            .filter(|l| l.starts_with("demo-db-"))
            .count();
        (roots == 2)
            .then_some(())
            .ok_or(format!("{roots} root blockers, not 2"))
    })
    .await;

    // F2: only the waiters.
    tmux.keys(&["2"]);
    tmux.wait("the waiting screen", Duration::from_secs(15), |s| {
        shows(s, &["F2 waiting"])?;
        let waiting = rows(s, "demo-db-");
        if waiting.len() == 2 && waiting.iter().all(|l| l.contains("Lock:")) {
            Ok(())
        } else {
            Err(format!("waiting rows: {waiting:?}"))
        }
    })
    .await;

    // F4: the pools, connection slots of both servers among them.
    tmux.keys(&["4"]);
    tmux.wait("the pools screen", Duration::from_secs(15), |s| {
        shows(s, &["POOL", "connection slots", "pgfleet-agent"])?;
        let slots = s.lines().filter(|l| l.contains("connection slots")).count();
        (slots == 2)
            .then_some(())
            .ok_or(format!("{slots} slot rows"))
    })
    .await;

    // `/` filters by label: only the second data centre's sessions stay.
    tmux.keys(&["1", "/", "dc=demo-dc2", "Enter"]);
    tmux.wait("the filtered screen", Duration::from_secs(15), |s| {
        shows(s, &["filter:dc=demo-dc2"])?;
        let r = rows(s, "demo-db-");
        if !r.is_empty() && r.iter().all(|l| l.starts_with("demo-db-2")) {
            Ok(())
        } else {
            Err(format!("rows: {r:?}"))
        }
    })
    .await;
    // Sorted by server, then back; Enter shows the selected session whole.
    tmux.keys(&["s"]);
    tmux.wait("the sort", Duration::from_secs(5), |s| {
        shows(s, &["sort:server"])
    })
    .await;
    tmux.keys(&["Enter"]);
    tmux.wait("a session's whole query", Duration::from_secs(5), |s| {
        shows(s, &["query (Esc to close)", "transaction", "demo-db-2 pid"])
    })
    .await;
    tmux.keys(&["Escape"]);
    tmux.wait("the popup to close", Duration::from_secs(5), |s| {
        if s.contains("Esc to close") {
            Err("still open".into())
        } else {
            Ok(())
        }
    })
    .await;

    // q leaves top, and the demo cleans up after itself.
    tmux.keys(&["q"]);
    tmux.wait("the demo to end", Duration::from_secs(60), |s| {
        shows(s, &["Stopped the demo and removed"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_says_when_the_collector_is_gone_and_comes_back_by_itself() {
    let mut fleet = fleet("top-db-1", &[("dc", "eu1")]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "top-db-1", "up", Duration::from_secs(20)).await;
    let tmux = Tmux::start(&format!(
        "{} --collector {} top --interval 1s",
        workspace_binary("pgfleet").display(),
        fleet.url
    ));
    tmux.wait("top", Duration::from_secs(20), |s| {
        shows(s, &["1 servers: 1 up", "eu1"])
    })
    .await;

    let watch = async {
        tmux.wait(
            "the collector's absence on screen",
            Duration::from_secs(15),
            |s| shows(s, &["retrying"]),
        )
        .await;
    };
    let (restarted, _) = tokio::join!(fleet.restart_collector(Duration::from_secs(5)), watch);
    restarted.unwrap();
    tmux.wait("top to reconnect", Duration::from_secs(30), |s| {
        if s.contains("retrying") {
            return Err("still says retrying".into());
        }
        shows(s, &["1 servers: 1 up", "eu1"])
    })
    .await;
    tmux.keys(&["q"]);
    drop(tmux);
    fleet.stop().await;
}

/// A collector that takes the connection and never answers: top says so
/// within its own 10 s, not the other commands' 2 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_says_when_the_collector_does_not_answer_within_its_ten_seconds() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let tmux = Tmux::start(&format!(
        "{} --collector {url} top --interval 1s",
        workspace_binary("pgfleet").display(),
    ));
    tmux.wait("top's deadline on screen", Duration::from_secs(40), |s| {
        shows(
            s,
            &[
                "the collector did not answer within 10s (--timeout)",
                "retrying",
            ],
        )
    })
    .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(10), "said so after {took:?}");
    tmux.keys(&["q"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_gets_the_room_and_no_address_or_wait_is_cut_at_80_120_and_200_columns() {
    let fleet = fleet("wide-db-1", &[("dc", "eu1")]).await;
    let client = fleet.client().await.unwrap();
    wait_for_status(&client, "wide-db-1", "up", Duration::from_secs(20)).await;
    // A client over TCP (its address has a five-digit port), waiting in
    // pg_sleep, with a query longer than any terminal.
    let sleeper = fleet.cluster.connect("layout-sleeper").await.unwrap();
    let query = format!(
        "SELECT pg_sleep(60) AS layout_check /* {} */",
        "the rest of a long query ".repeat(8)
    );
    let sleeping = tokio::spawn({
        let query = query.clone();
        async move { sleeper.simple_query(&query).await }
    });
    let me = fleet.cluster.connect("layout-probe").await.unwrap();
    let port: i32 = wait_for("the sleeper's client port", Duration::from_secs(10), || {
        let me = &me;
        async move {
            me.query_opt(
                "SELECT client_port FROM pg_stat_activity WHERE application_name = 'layout-sleeper' AND wait_event = 'PgSleep'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .map(|r| r.get::<_, i32>(0))
            .ok_or_else(|| "not sleeping yet".to_owned())
        }
    })
    .await;
    let address = format!("127.0.0.1:{port}");
    for width in [80u16, 120, 200] {
        let tmux = Tmux::sized(
            &format!(
                "{} --collector {} top --interval 1s",
                workspace_binary("pgfleet").display(),
                fleet.url
            ),
            width,
            24,
        );
        let screen = tmux
            .wait(
                &format!("the sleeper at {width} columns"),
                Duration::from_secs(20),
                |s| shows(s, &["Timeout:PgSleep", "SELECT pg_sleep("]),
            )
            .await;
        let row = screen
            .lines()
            .find(|l| l.contains("SELECT pg_sleep("))
            .unwrap_or_default();
        assert!(
            screen
                .lines()
                .all(|l| l.chars().count() <= usize::from(width)),
            "{screen}"
        );
        // The query has the rest of the width: at least a third of the line
        // (columns go first), and most of what a 200-column line leaves
        // beside every column (the load column and its sparkline included).
        let shown = row.trim_end().len() - row.find("SELECT pg_sleep(").unwrap();
        let least = if width == 200 {
            85
        } else {
            usize::from(width / 3)
        };
        assert!(
            shown >= least,
            "{shown} characters of the query at {width}: {row:?}"
        );
        // The client's address is whole or not there; never cut.
        assert!(
            row.contains(&address) || !row.contains("127.0.0.1"),
            "the address {address} is cut at {width}: {row:?}"
        );
        if width == 200 {
            assert!(
                row.contains(&address),
                "room for the client at 200: {row:?}"
            );
            assert!(
                row.contains("layout-sleeper"),
                "room for the application at 200: {row:?}"
            );
        }
        if width < 200 {
            assert!(!screen.contains("APPLICATION"), "the first to go: {screen}");
        }
        tmux.keys(&["q"]);
    }
    sleeping.abort();
    fleet.stop().await;
}
