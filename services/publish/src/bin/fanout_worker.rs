//! The fanout worker binary: consumes the job stream, reads job records from
//! publish and followers from follow-graph over gRPC, writes Redis inboxes.
//! Scale it on stream lag, independently of the servers.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feed_server::app::main::<publish::WorkerApp>().await
}
