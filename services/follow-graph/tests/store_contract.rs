//! The GraphStore contract, run against every backend.

use feed_core::FeedRef;
use feed_server::config::ScyllaConfig;
use follow_graph::store::contract::contract_policy;
use follow_graph::store::embedded::EmbeddedGraphStore;
use follow_graph::store::{GraphStore, scylla};

async fn embedded(_: &str) -> feed_testkit::Backend<dyn GraphStore> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedGraphStore::open(dir.path(), contract_policy()).expect("open");
    Some((Box::new(store), Box::new(dir)))
}

follow_graph::graph_store_contract!(embedded_store, embedded);

#[tokio::test]
async fn embedded_store_keeps_edges_and_counts_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = FeedRef::parse("tag:durable").expect("feed");
    {
        let store = EmbeddedGraphStore::open(dir.path(), contract_policy()).expect("open");
        store.follow(7, &feed).await.expect("follow");
        store.block(8, 9).await.expect("block");
    }
    let store = EmbeddedGraphStore::open(dir.path(), contract_policy()).expect("reopen");
    assert_eq!(
        store.feed_counts(std::slice::from_ref(&feed)).await.expect("counts")[0].followers,
        1
    );
    assert_eq!(store.list_followers(&feed, 0, 10).await.expect("followers")[0].user, 7);
    assert!(store.relationships(8, &[9]).await.expect("rel")[0].blocking);
    store.follow(10, &feed).await.expect("follow after reopen");
    let log = store.edge_changes(0, 100).await.expect("log");
    assert_eq!(log.len(), 2);
    assert!(log[0].seq < log[1].seq, "positions continue after a restart");
}

/// On the CQL node the test script starts (see `scripts/cql-node.sh`), a
/// keyspace per check.
async fn cql(check: &str) -> feed_testkit::Backend<dyn GraphStore> {
    let cfg = cql_config(check)?;
    scylla::migrate(&cfg).await.expect("migrate");
    let store = scylla::ScyllaGraphStore::connect(&cfg, contract_policy())
        .await
        .expect("connect");
    Some((Box::new(store), Box::new(())))
}

follow_graph::graph_store_contract!(scylla_store, cql);

fn cql_config(what: &str) -> Option<ScyllaConfig> {
    Some(
        ScyllaConfig::single_node(feed_testkit::cql_nodes()?, feed_testkit::cql_keyspace(what))
            .with_login(feed_testkit::cql_login()),
    )
}

/// The test run's node asks for a login (scripts/cql-node.sh): the right
/// one connects (every CQL test above), a wrong password is refused at
/// connect with an error that says so and does not repeat the password.
#[tokio::test]
async fn a_wrong_cql_password_is_refused_at_connect_without_echoing_it() {
    let Some(cfg) = cql_config("login") else { return };
    if cfg.username.is_empty() {
        println!("skipped: the CQL node asks for no login (FEED__SCYLLA__USERNAME unset)");
        return;
    }
    scylla::migrate(&cfg).await.expect("the configured login connects");
    let wrong = ScyllaConfig {
        password: "not-the-password-4711".into(),
        ..cfg.clone()
    };
    let err = scylla::ScyllaGraphStore::connect(&wrong, contract_policy())
        .await
        .err()
        .expect("a wrong password is refused")
        .to_string();
    assert!(
        err.to_lowercase().contains("auth") || err.contains("credentials") || err.contains("password"),
        "the error says the login failed: {err}"
    );
    assert!(
        !err.contains("not-the-password-4711"),
        "the password is not repeated: {err}"
    );
    assert!(
        !format!("{wrong:?}").contains("not-the-password-4711"),
        "Debug of the config hides the password"
    );
}

/// Two replicas on one keyspace race follows and unfollows of one feed (each
/// edge changed through both at the same instant): counts, lists and edge
/// versions come out exact, each change applied once.
#[tokio::test]
async fn scylla_replicas_racing_one_feed_keep_counts_and_versions_exact() {
    let Some(cfg) = cql_config("graphrace") else { return };
    scylla::migrate(&cfg).await.expect("migrate");
    let a = scylla::ScyllaGraphStore::connect(&cfg, contract_policy())
        .await
        .expect("connect a");
    let b = scylla::ScyllaGraphStore::connect(&cfg, contract_policy())
        .await
        .expect("connect b");
    let feed = FeedRef::parse("tag:race").expect("feed");
    let users: Vec<u64> = (1..=12).collect();
    let count = async || a.feed_counts(std::slice::from_ref(&feed)).await.expect("counts")[0].followers;
    for (step, follow) in [(1u64, true), (2, false), (3, true)] {
        let races = users.iter().map(|&u| {
            let (a, b, feed) = (&a, &b, &feed);
            async move {
                let (x, y) = if follow {
                    tokio::join!(a.follow(u, feed), b.follow(u, feed))
                } else {
                    tokio::join!(a.unfollow(u, feed), b.unfollow(u, feed))
                };
                let (x, y) = (x.expect("replica a"), y.expect("replica b"));
                assert!(x.changed != y.changed, "user {u} step {step}: one of the two applied");
            }
        });
        futures::future::join_all(races).await;
        let want = if follow { users.len() as u64 } else { 0 };
        assert_eq!(count().await, want, "after step {step}");
        assert_eq!(b.list_followers(&feed, 0, 100).await.expect("list").len() as u64, want);
        let edges: Vec<(u64, FeedRef)> = users.iter().map(|&u| (u, feed.clone())).collect();
        for e in a.edge_states(&edges).await.expect("states") {
            assert_eq!((e.version, e.following), (step, follow), "user {}", e.follower);
        }
        let following = a.following_counts(&users).await.expect("following");
        assert!(following.iter().all(|n| *n == u64::from(follow)), "{following:?}");
    }
}

/// `follow-graph --migrate` (the Kubernetes migration Job) applies the schema; until
/// it ran, the store refuses the keyspace and says what to run.
#[tokio::test]
async fn the_migrate_step_applies_the_schema_the_store_checks() {
    let Some(cfg) = cql_config("migrate") else { return };
    let refused = scylla::ScyllaGraphStore::connect(&cfg, contract_policy())
        .await
        .err()
        .expect("no schema yet");
    assert!(refused.to_string().contains("--migrate"), "{refused}");
    feed_testkit::run_migrate(env!("CARGO_BIN_EXE_follow-graph"), &cfg.nodes, &cfg.keyspace);
    scylla::ScyllaGraphStore::connect(&cfg, contract_policy())
        .await
        .expect("the schema is there");
}
