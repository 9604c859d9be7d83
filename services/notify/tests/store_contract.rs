//! The NotifyStore contract, run against every backend.

use feed_proto::notify::v1::{NoteRecord, Notification, NotificationKind};
use feed_server::config::ScyllaConfig;
use notify::store::embedded::EmbeddedNotifyStore;
use notify::store::{GroupChange, NotifyStore, scylla};

async fn embedded(_: &str) -> feed_testkit::Backend<dyn NotifyStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedNotifyStore::open(dir.path()).expect("open");
    Some((Box::new(store), Box::new(dir)))
}

notify::notify_store_contract!(embedded_store, embedded);

#[tokio::test]
async fn embedded_store_keeps_groups_and_their_actors_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = NoteRecord {
        note: Some(Notification {
            id: 77,
            kind: NotificationKind::Remind as i32,
            ..Default::default()
        }),
        group_key: "activity/1/like/0".into(),
        seq: 1,
        ..Default::default()
    };
    {
        let store = EmbeddedNotifyStore::open(dir.path()).expect("open");
        store.add_to_group(5, 100, &rec, 5).await.expect("add");
    }
    let store = EmbeddedNotifyStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.add_to_group(5, 100, &rec, 5).await.expect("replay"),
        GroupChange::Unchanged,
        "a replay after a restart still counts once"
    );
    let GroupChange::Changed(after) = store.add_to_group(5, 101, &rec, 5).await.expect("add") else {
        panic!("a new actor changes the group");
    };
    assert_eq!(after.note.map(|n| n.actor_count), Some(2));
}

/// On the CQL node the test script starts (see `scripts/cql-node.sh`), a
/// keyspace per check.
async fn cql(check: &str) -> feed_testkit::Backend<dyn NotifyStore> {
    let cfg = cql_config(check)?;
    scylla::migrate(&cfg).await.expect("migrate");
    let store = scylla::ScyllaNotifyStore::connect(&cfg).await.expect("connect");
    Some((Box::new(store), Box::new(())))
}

notify::notify_store_contract!(scylla_store, cql);

fn cql_config(what: &str) -> Option<ScyllaConfig> {
    Some(
        ScyllaConfig::single_node(feed_testkit::cql_nodes()?, feed_testkit::cql_keyspace(what))
            .with_login(feed_testkit::cql_login()),
    )
}

/// `notify --migrate` (the Kubernetes migration Job) applies the schema; until
/// it ran, the store refuses the keyspace and says what to run.
#[tokio::test]
async fn the_migrate_step_applies_the_schema_the_store_checks() {
    let Some(cfg) = cql_config("migrate") else { return };
    let refused = scylla::ScyllaNotifyStore::connect(&cfg)
        .await
        .err()
        .expect("no schema yet");
    assert!(refused.to_string().contains("--migrate"), "{refused}");
    feed_testkit::run_migrate(env!("CARGO_BIN_EXE_notify"), &cfg.nodes, &cfg.keyspace);
    scylla::ScyllaNotifyStore::connect(&cfg)
        .await
        .expect("the schema is there");
}
