//! A fault-injecting TCP proxy for the stream's tests: it forwards to one
//! address and can delay, throttle, cut and resume what crosses it, in both
//! directions. It stands in for `netem`, which this machine's kernel lacks.
//!
//! A cut behaves like a pulled cable, not like a closed socket: nothing is
//! forwarded and nothing is closed, and new connections are accepted but go
//! nowhere until the cut ends. Only keepalives and timeouts can tell.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to the traffic now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Added to every chunk, in each direction.
    pub delay: Duration,
    /// The most bytes per second in each direction of each connection.
    pub bytes_per_sec: Option<u64>,
    /// Nothing crosses while true.
    pub cut: bool,
}

/// A running proxy; dropping it stops it and every connection through it.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    /// Bytes delivered from clients to the upstream, and back.
    counts: Arc<[AtomicU64; 2]>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 for a free one) and forwards to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(watch::channel(Faults::default()).0);
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let shared = faults.clone();
        let shared_counts = counts.clone();
        let accept = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.retain(|c: &JoinHandle<()>| !c.is_finished());
                connections.push(tokio::spawn(relay(
                    client,
                    upstream,
                    shared.subscribe(),
                    shared_counts.clone(),
                )));
            }
            for c in connections {
                c.abort();
            }
        });
        Ok(FaultProxy {
            addr,
            faults,
            counts,
            accept,
        })
    }

    /// Bytes delivered so far from clients to the upstream (TCP payload,
    /// after TLS and compression): what an agent sends its collector.
    pub fn bytes_up(&self) -> u64 {
        self.counts[0].load(Ordering::Relaxed)
    }

    /// Bytes delivered so far from the upstream back to clients.
    pub fn bytes_down(&self) -> u64 {
        self.counts[1].load(Ordering::Relaxed)
    }

    /// Sets what the proxy does from now on.
    pub fn set(&self, faults: Faults) {
        self.faults.send_replace(faults);
    }

    /// What the proxy does now.
    pub fn faults(&self) -> Faults {
        *self.faults.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits until the link is not cut.
async fn until_joined(faults: &mut watch::Receiver<Faults>) -> Option<Faults> {
    faults.wait_for(|f| !f.cut).await.ok().map(|f| *f)
}

async fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Faults>,
    counts: Arc<[AtomicU64; 2]>,
) {
    if until_joined(&mut faults).await.is_none() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, faults.clone(), &counts[0]);
    let down = pump(server_read, client_write, faults, &counts[1]);
    tokio::join!(up, down);
}

/// Moves bytes one way: a reader that stamps each chunk with when it may be
/// delivered, and a writer that waits for that time, for the link to be up,
/// and for the throttle.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
    delivered: &AtomicU64,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let mut read_faults = faults.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            // A cut link carries nothing, so reading stops too.
            if until_joined(&mut read_faults).await.is_none() {
                return;
            }
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let due = Instant::now() + read_faults.borrow().delay;
                    if tx.send((due, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let mut write_faults = faults;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            let Some(now) = until_joined(&mut write_faults).await else {
                return;
            };
            if let Some(rate) = now.bytes_per_sec.filter(|r| *r > 0) {
                let secs = chunk.len() as f64 / rate as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
            delivered.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, n: usize) -> Duration {
        let start = Instant::now();
        stream.write_all(&vec![7u8; n]).await.unwrap();
        let mut back = vec![0u8; n];
        stream.read_exact(&mut back).await.unwrap();
        start.elapsed()
    }

    #[tokio::test]
    async fn it_delays_throttles_cuts_and_resumes() {
        let proxy = FaultProxy::start(([127, 0, 0, 1], 0).into(), echo_server().await)
            .await
            .unwrap();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert!(round_trip(&mut s, 10).await < Duration::from_millis(100));
        assert_eq!((proxy.bytes_up(), proxy.bytes_down()), (10, 10));

        proxy.set(Faults {
            delay: Duration::from_millis(200),
            ..Faults::default()
        });
        let rtt = round_trip(&mut s, 10).await;
        assert!(rtt >= Duration::from_millis(400), "{rtt:?}");

        proxy.set(Faults {
            bytes_per_sec: Some(50_000),
            ..Faults::default()
        });
        // 25 kB each way at 50 kB/s: at least half a second.
        let rtt = round_trip(&mut s, 25_000).await;
        assert!(rtt >= Duration::from_millis(500), "{rtt:?}");

        proxy.set(Faults {
            cut: true,
            ..Faults::default()
        });
        let cut = tokio::time::timeout(Duration::from_millis(500), round_trip(&mut s, 10)).await;
        assert!(cut.is_err(), "nothing crosses a cut link");
        proxy.set(Faults::default());
        // What was sent during the cut arrives once the link is back.
        let mut back = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut back))
            .await
            .expect("the link is back")
            .unwrap();
        assert!(round_trip(&mut s, 10).await < Duration::from_millis(100));
    }
}
