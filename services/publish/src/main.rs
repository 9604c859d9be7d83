//! The publish server binary: PublishService, the sweeper and the
//! scheduled-item releaser. Fanout runs in `fanout-worker` processes.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feed_server::app::main::<publish::App>().await
}
