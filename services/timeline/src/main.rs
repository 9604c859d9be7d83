//! The timeline server binary.

#[global_allocator]
static ALLOC: feed_server::Allocator = feed_server::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feed_server::app::main::<timeline::App>().await
}
