//! `Watch`: a stream of the servers' changes for each watcher, fed by a task
//! that follows the aggregator's published views.

use std::collections::HashMap;
use std::sync::Arc;

use pgfleet_proto::time::now_micros;
use pgfleet_proto::v1;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use super::{server_message, status_word};
use crate::aggregator::{AggregatorHandle, ServerView};

/// A watcher's events, or the status that ends its stream when it fell
/// behind.
pub struct WatchStream {
    events: mpsc::Receiver<v1::WatchEvent>,
    dropped: Option<oneshot::Receiver<Status>>,
    ended: bool,
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<v1::WatchEvent, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(dropped) = &mut self.dropped {
            match std::pin::Pin::new(dropped).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    self.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                // The watch ended another way: what is queued still goes.
                Poll::Ready(Err(_)) => self.dropped = None,
                Poll::Pending => {}
            }
        }
        self.events.poll_recv(cx).map(|e| e.map(Ok))
    }
}

/// How many events may wait for a watcher before it is dropped as too slow.
pub const WATCH_QUEUE: usize = 4096;

/// How often a watcher's servers are checked for going stale (which no new
/// snapshot announces).
const WATCH_HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Starts watching the servers that carry every one of `labels`: a full
/// list first, then each change of a server or of its health, until the
/// client goes, falls [`WATCH_QUEUE`] events behind, or `shutdown` fires.
pub fn start(
    aggregator: &AggregatorHandle,
    labels: HashMap<String, String>,
    mut shutdown: Option<watch::Receiver<()>>,
) -> WatchStream {
    let wanted = move |s: &ServerView| s.has_labels(&labels);
    let mut views = aggregator.subscribe();
    let (tx, rx) = mpsc::channel(WATCH_QUEUE);
    let (drop_watcher, dropped) = oneshot::channel();
    let mut last = views.borrow_and_update().clone();
    let now = now_micros();
    let mut sent: HashMap<Arc<str>, &'static str> = HashMap::new();
    let mut servers = Vec::new();
    for (id, s) in last.servers.iter().filter(|(_, s)| wanted(s)) {
        let message = server_message(s, now);
        sent.insert(id.clone(), status_word(&s.health(now)));
        servers.push(message);
    }
    let full = v1::WatchEvent {
        event: Some(v1::watch_event::Event::Full(v1::WatchFull { servers })),
    };
    // The channel is new and empty, so this cannot wait.
    let _ = tx.try_send(full);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_HEALTH_EVERY);
        let stopping = async move {
            match &mut shutdown {
                Some(s) => {
                    let _ = s.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopping);
        loop {
            let fresh = tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
                _ = tick.tick() => false,
                _ = tx.closed() => return,
                _ = &mut stopping => {
                    let _ = drop_watcher.send(Status::unavailable(
                        "the collector is shutting down; watch again (here or at another collector)",
                    ));
                    return;
                }
            };
            let next = if fresh {
                views.borrow_and_update().clone()
            } else {
                last.clone()
            };
            let now = now_micros();
            let mut events = Vec::new();
            for (id, s) in next.servers.iter().filter(|(_, s)| wanted(s)) {
                let same = last.servers.get(id).is_some_and(|old| Arc::ptr_eq(old, s));
                let status = status_word(&s.health(now));
                if same && sent.get(id).is_some_and(|st| *st == status) {
                    continue;
                }
                sent.insert(id.clone(), status);
                events.push(v1::watch_event::Event::Changed(server_message(s, now)));
            }
            for id in last.servers.keys() {
                if !next.servers.contains_key(id) && sent.remove(id).is_some() {
                    events.push(v1::watch_event::Event::Removed(id.to_string()));
                }
            }
            for event in events {
                let event = v1::WatchEvent { event: Some(event) };
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
                    // Its stream ends at once with the status; what it
                    // had not read is stale and goes unsent.
                    let _ = drop_watcher.send(Status::resource_exhausted(format!(
                        "this watcher fell {WATCH_QUEUE} events behind; watch again"
                    )));
                    return;
                }
            }
            last = next;
        }
    });
    WatchStream {
        events: rx,
        dropped: Some(dropped),
        ended: false,
    }
}
