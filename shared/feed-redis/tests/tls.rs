//! `rediss://`: a redis-server that speaks only TLS and asks clients for a
//! certificate (mutual TLS), reached with what [`feed_redis::set_tls`] set.
//! One test: the TLS setting is the process's.

use std::time::Duration;

use feed_redis::{Redis, Timeouts};
use feed_testkit::{RedisServer, TestPki};

const SHORT: Timeouts = Timeouts {
    connect: Duration::from_secs(2),
    response: Duration::from_secs(2),
};

fn pem(path: String) -> Vec<u8> {
    std::fs::read(path).expect("pem")
}

#[tokio::test]
async fn rediss_is_spoken_with_the_configured_ca_and_client_certificate_and_nothing_less() {
    let pki = TestPki::new().expect("pki");
    let server = RedisServer::start_tls(&pki).expect("redis-server with TLS");
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");

    // Plaintext to the TLS port.
    let plain = url.replacen("rediss://", "redis://", 1);
    assert!(
        Redis::connect_with(&plain, SHORT).await.is_err(),
        "plaintext was answered"
    );
    // The server trusted, but no client certificate: Redis ends the handshake.
    feed_redis::set_tls(Some(pem(pki.ca())), None);
    assert!(
        Redis::connect_with(&url, SHORT).await.is_err(),
        "a client without a certificate was answered"
    );
    // Another CA trusted: the server's certificate is refused.
    let other = TestPki::new().expect("pki");
    feed_redis::set_tls(Some(pem(other.ca())), Some((pem(pki.cert()), pem(pki.key()))));
    assert!(
        Redis::connect_with(&url, SHORT).await.is_err(),
        "a server of another CA was trusted"
    );

    feed_redis::set_tls(Some(pem(pki.ca())), Some((pem(pki.cert()), pem(pki.key()))));
    let mut redis = Redis::connect_with(&url, SHORT).await.expect("connect over TLS");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("over tls")
        .query_async(&mut redis)
        .await
        .expect("set");
    let got: String = redis::cmd("GET").arg("k").query_async(&mut redis).await.expect("get");
    assert_eq!(got, "over tls");
}
