//! Watch streams in process: a slow client is dropped without holding up
//! anyone else, and resumes from its last event id.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use feed_core::{ApiError, ManualClock};
use feed_proto::notify::v1::{Notification, RemindJob, watch_event};
use feed_server::Shutdown;
use feed_server::queue::MemoryQueue;
use notify::graph::{Graph, Relation};
use notify::live::{EventId, LiveLog, MemoryLive};
use notify::store::embedded::EmbeddedNotifyStore;
use notify::{Notifier, NotifyConfig};

/// Nobody follows or blocks anybody: the graph plays no part in Watch.
struct NoRelations;

#[async_trait]
impl Graph for NoRelations {
    async fn relations(&self, _: u64, recipients: &[u64]) -> Result<Vec<Relation>, ApiError> {
        Ok(vec![Relation::default(); recipients.len()])
    }
}

fn notifier(live: Arc<MemoryLive>, dir: &std::path::Path, buffer: usize) -> Notifier {
    Notifier::new(
        Arc::new(EmbeddedNotifyStore::open(dir).expect("store")),
        live,
        Arc::new(NoRelations),
        Arc::new(MemoryQueue::<RemindJob>::default()),
        Arc::new(ManualClock::new(1_750_000_000_000)),
        NotifyConfig {
            watch_buffer: buffer,
            slow_client: Duration::from_millis(300),
            heartbeat: Duration::from_secs(3600),
            ..NotifyConfig::default()
        },
        Shutdown::new(),
    )
}

fn note(content: &str) -> Notification {
    Notification {
        content: content.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_slow_client_is_dropped_while_others_keep_receiving_and_it_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = Arc::new(MemoryLive::new(1000));
    let n = notifier(live.clone(), dir.path(), 4);
    let mut slow = n.watch(1, None);
    let mut fast = n.watch(1, None);
    // Let both streams subscribe before anything is appended.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut fast_seen = Vec::new();
    for i in 0..20 {
        live.append(1, &note(&format!("n{i}"))).await.expect("append");
        // The fast client keeps up.
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), fast.recv()).await {
            let ev = ev.expect("fast stream stays healthy");
            if let Some(watch_event::Event::Notification(x)) = ev.event {
                fast_seen.push(x.content);
                break;
            }
        }
    }
    assert_eq!(fast_seen.len(), 20, "the fast client got everything: {fast_seen:?}");
    // The slow client has not read for longer than the server waits.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut last_ok = None;
    let mut ended = None;
    while let Some(item) = slow.recv().await {
        match item {
            Ok(ev) => last_ok = Some(ev.event_id),
            Err(e) => ended = Some(e),
        }
    }
    assert!(
        matches!(ended, Some(ApiError::ResourceExhausted(_))),
        "the slow client is dropped: {ended:?}"
    );
    let resume = EventId::parse(&last_ok.expect("some events before the drop")).expect("id");
    let mut again = n.watch(1, Some(resume));
    let mut rest = Vec::new();
    while rest.len() < 20 {
        match tokio::time::timeout(Duration::from_secs(2), again.recv()).await {
            Ok(Some(Ok(ev))) => {
                if let Some(watch_event::Event::Notification(x)) = ev.event {
                    rest.push(x.content);
                }
            }
            _ => break,
        }
    }
    let delivered_before = 20 - rest.len();
    let expected: Vec<String> = (delivered_before..20).map(|i| format!("n{i}")).collect();
    assert_eq!(rest, expected, "resuming delivers exactly what was missed");
}
