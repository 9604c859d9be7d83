//! The ActivityStore contract on every backend.

use publish::store::contract::run_all;
use publish::store::embedded::EmbeddedActivityStore;

#[tokio::test]
async fn embedded_activity_store_passes_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_all(&EmbeddedActivityStore::open(dir.path()).expect("open")).await;
}

/// Runs only against a real cluster: no ScyllaDB can be installed on the
/// build machines, so without `FEED__SCYLLA__NODES` this says so and passes.
#[tokio::test]
async fn scylla_activity_store_passes_the_contract() {
    let nodes = std::env::var("FEED__SCYLLA__NODES").unwrap_or_default();
    if nodes.trim().is_empty() {
        println!("skipped: FEED__SCYLLA__NODES is not set (no ScyllaDB server on this machine)");
        return;
    }
    let cfg = feed_server::config::ScyllaConfig {
        nodes,
        keyspace: format!("feed_pub_test_{}", std::process::id()),
        replication_factor: 1,
        local_dc: String::new(),
    };
    publish::store::scylla::migrate(&cfg).await.expect("migrate");
    run_all(
        &publish::store::scylla::ScyllaActivityStore::connect(&cfg)
            .await
            .expect("connect"),
    )
    .await;
}
