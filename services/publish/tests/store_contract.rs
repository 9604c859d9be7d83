//! The ActivityStore contract on every backend.

use publish::store::contract::run_all;
use publish::store::embedded::EmbeddedActivityStore;

#[tokio::test]
async fn embedded_activity_store_passes_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    run_all(&EmbeddedActivityStore::open(dir.path()).expect("open")).await;
}
