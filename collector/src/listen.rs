//! The gRPC port as a whole fleet reaches it: after a collector restart every
//! agent reconnects within seconds, so the listen backlog is deep, the
//! process may hold a socket per agent, and running out of descriptors slows
//! the accept loop down rather than spinning it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tracing::{debug, warn};

/// Connections the kernel holds for the accept loop (it caps the figure at
/// net.core.somaxconn: 4096 by default since Linux 5.4, 128 before).
pub const LISTEN_BACKLOG: u32 = 4096;

/// How long the accept loop rests when accepting fails for want of
/// something (descriptors, memory).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// At most one warning of such failures in this long.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// A listener on `addr` with a backlog of [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The connections `listener` accepts, with TCP_NODELAY set (with Nagle's
/// algorithm a reply written in parts waited some 40 ms for the client's
/// delayed ACK). When accepting fails for want of something (descriptors,
/// memory), the loop pauses [`ACCEPT_PAUSE`] before it tries again,
/// and says so now and then; a connection that failed alone is passed over.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    let mut warned: Option<Instant> = None;
    TcpListenerStream::new(listener).then(move |conn| {
        let pause = match &conn {
            Ok(c) => {
                if let Err(e) = c.set_nodelay(true) {
                    warn!(error = %e, "Cannot set TCP_NODELAY on a connection.");
                }
                false
            }
            Err(e) if one_connection(e) => false,
            Err(e) => {
                if warned.is_none_or(|w| w.elapsed() >= ACCEPT_WARN_EVERY) {
                    warned = Some(Instant::now());
                    if out_of_files(e) {
                        warn!(error = %e, open_files_limit = ?open_files_limit(), "Out of file descriptors: new agents wait. Raise the collector's limit (LimitNOFILE= in its systemd unit, ulimit -n) to at least twice the agents it serves.");
                    } else {
                        warn!(error = %e, "Cannot accept connections; new agents wait.");
                    }
                }
                true
            }
        };
        async move {
            if pause {
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
            conn
        }
    })
}

/// An error of one connection (it went away before it was accepted), not
/// of the listener.
fn one_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || e.raw_os_error() == Some(71) // EPROTO
}

/// EMFILE or ENFILE.
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// The soft limit of open files, None when unlimited.
pub(crate) fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the soft limit of open files to the hard one (a collector holds a
/// socket per agent, and the usual soft limit is 1,024), and says what it is.
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, "Cannot raise the limit of open files.");
        }
    }
    match open_files_limit() {
        Some(n) if n < 8_192 => warn!(
            open_files_limit = n,
            "The collector may hold at most about {} agents' streams; raise the limit of open files (LimitNOFILE= in its systemd unit, ulimit -n) for a larger fleet.",
            n / 2
        ),
        n => debug!(open_files_limit = ?n, "Limit of open files."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_takes_connections_with_nodelay() {
        let listener = listen(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = Box::pin(incoming(listener));
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = conns.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
        assert!(out_of_files(&std::io::Error::from_raw_os_error(24)));
        assert!(!out_of_files(&std::io::Error::from_raw_os_error(104)));
        // ECONNABORTED and ECONNRESET are one connection's; EMFILE and
        // ENOBUFS the listener's.
        assert!(one_connection(&std::io::Error::from_raw_os_error(103)));
        assert!(one_connection(&std::io::Error::from_raw_os_error(104)));
        assert!(!one_connection(&std::io::Error::from_raw_os_error(24)));
        assert!(!one_connection(&std::io::Error::from_raw_os_error(105)));
    }
}
