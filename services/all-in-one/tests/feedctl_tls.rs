//! feedctl against a server that speaks only mutual TLS: with the CA and a
//! client certificate it is answered; without them it fails saying why.

use std::process::Command;

use feed_server::Shutdown;
use feed_server::config::ServerConfig;
use feed_server::serve::{ServeOptions, ServiceSet, serve};
use feed_testkit::TestPki;

fn feedctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_feedctl"))
        .args(args)
        .env_remove("FEED_ADDR")
        .env_remove("FEED_TOKEN")
        .output()
        .expect("feedctl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedctl_speaks_mutual_tls_given_the_ca_and_its_certificate() {
    let pki = TestPki::new().expect("pki");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = format!("https://127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let shutdown = Shutdown::new();
    let opts = ServeOptions {
        config: ServerConfig {
            tls_cert: pki.cert(),
            tls_key: pki.key(),
            tls_client_ca: pki.ca(),
            drain_delay_ms: 0,
            ..ServerConfig::default()
        },
        listener,
        shutdown: shutdown.clone(),
    };
    tokio::spawn(async move { serve(ServiceSet::default(), opts).await.expect("serve") });
    let (ca, cert, key) = (pki.ca(), pki.cert(), pki.key());

    let ok = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            feedctl(&[
                "--addr", &addr, "--ca", &ca, "--cert", &cert, "--key", &key, "health", "liveness",
            ])
        }
    })
    .await
    .expect("join");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "Serving");

    let no_ca = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || feedctl(&["--addr", &addr, "health"])
    })
    .await
    .expect("join");
    assert!(!no_ca.status.success());
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("--ca"),
        "{}",
        String::from_utf8_lossy(&no_ca.stderr)
    );

    let ca = pki.ca();
    let no_cert = tokio::task::spawn_blocking(move || feedctl(&["--addr", &addr, "--ca", &ca, "health"]))
        .await
        .expect("join");
    assert!(!no_cert.status.success(), "answered without a client certificate");
    shutdown.trigger();
}
