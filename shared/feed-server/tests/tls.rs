//! TLS between the platform's services: a real server on 127.0.0.1:0
//! serving TLS that asks callers for a certificate (mutual TLS), and the
//! clients the services dial it with; and the settings' own checks
//! (Redis over TLS itself: feed-redis's tests).

use std::time::Duration;

use feed_server::Shutdown;
use feed_server::client::{Dial, balanced};
use feed_server::config::{ClientsConfig, RedisConfig, ServerConfig};
use feed_server::serve::{ServeOptions, ServiceSet, serve};
use feed_testkit::TestPki;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A health-only server with `pki`'s certificate, asking callers for one
/// signed by `pki`'s CA; answers its port.
async fn tls_server(pki: &TestPki, shutdown: &Shutdown) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let config = ServerConfig {
        tls_cert: pki.cert(),
        tls_key: pki.key(),
        tls_client_ca: pki.ca(),
        drain_delay_ms: 0,
        ..ServerConfig::default()
    };
    let opts = ServeOptions {
        config,
        listener,
        shutdown: shutdown.clone(),
    };
    tokio::spawn(async move { serve(ServiceSet::default(), opts).await.expect("serve") });
    port
}

fn clients(ca: String, identity: Option<&TestPki>) -> ClientsConfig {
    ClientsConfig {
        tls_ca: ca,
        tls_cert: identity.map(TestPki::cert).unwrap_or_default(),
        tls_key: identity.map(TestPki::key).unwrap_or_default(),
        ..ClientsConfig::default()
    }
}

/// The liveness answer through `channel`, or the error's text.
async fn live(channel: Channel) -> Result<i32, String> {
    let mut health = HealthClient::new(channel);
    let ask = health.check(HealthCheckRequest {
        service: feed_server::serve::LIVENESS.to_owned(),
    });
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(r)) => Ok(r.into_inner().status),
        Ok(Err(e)) => Err(format!("{e}")),
        Err(_) => Err("no answer in 5 s".into()),
    }
}

#[tokio::test]
async fn services_call_each_other_over_mutual_tls_and_anyone_else_is_refused() {
    let pki = TestPki::new().expect("pki");
    let shutdown = Shutdown::new();
    let port = tls_server(&pki, &shutdown).await;
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let dial = Dial::from_config(&clients(pki.ca(), Some(&pki))).expect("dial");

    // By address and by name (the name resolved and balanced over, each
    // address checked against the name).
    for url in [format!("https://127.0.0.1:{port}"), format!("https://localhost:{port}")] {
        let mut answer = live(dial.channel(&url).expect("channel")).await;
        // The balanced channel takes its endpoints in on the first probe round.
        for _ in 0..20 {
            if answer.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = live(dial.channel(&url).expect("channel")).await;
        }
        assert_eq!(answer, Ok(serving), "{url}");
    }

    let url = format!("https://127.0.0.1:{port}");
    // No client certificate: the server ends the handshake.
    let anonymous = Dial::from_config(&clients(pki.ca(), None)).expect("dial");
    assert!(live(anonymous.channel(&url).expect("channel")).await.is_err());
    // A certificate from another CA, and trust in another CA only.
    let other = TestPki::new().expect("pki");
    let stranger = Dial::from_config(&ClientsConfig {
        tls_ca: pki.ca(),
        ..clients(other.ca(), Some(&other))
    })
    .expect("dial");
    assert!(live(stranger.channel(&url).expect("channel")).await.is_err());
    let misled = Dial::from_config(&clients(other.ca(), Some(&pki))).expect("dial");
    assert!(live(misled.channel(&url).expect("channel")).await.is_err());
    // Plaintext to a TLS port.
    let plain = balanced(&format!("http://127.0.0.1:{port}")).expect("channel");
    assert!(live(plain).await.is_err());
    shutdown.trigger();
}

#[tokio::test]
async fn half_a_tls_setting_is_refused_naming_it() {
    let pki = TestPki::new().expect("pki");
    let no_ca = Dial::default()
        .channel("https://127.0.0.1:1")
        .map(|_| ())
        .expect_err("https without a CA");
    assert!(no_ca.to_string().contains("clients.tls_ca"), "{no_ca}");
    let cert_alone = Dial::from_config(&ClientsConfig {
        tls_cert: pki.cert(),
        ..clients(pki.ca(), None)
    })
    .map(|_| ())
    .expect_err("a certificate without its key");
    assert!(cert_alone.to_string().contains("clients.tls_key"), "{cert_alone}");
    let missing = Dial::from_config(&clients("/nonexistent/ca.pem".into(), None))
        .map(|_| ())
        .expect_err("a CA file that is not there");
    assert!(missing.to_string().contains("clients.tls_ca"), "{missing}");

    let plaintext_redis = RedisConfig {
        url: "redis://127.0.0.1:6379/".into(),
        tls_ca: pki.ca(),
        ..RedisConfig::default()
    };
    let refused = plaintext_redis.use_tls().expect_err("a CA beside a redis:// URL");
    assert!(refused.to_string().contains("rediss://"), "{refused}");
    let half = RedisConfig {
        url: "rediss://127.0.0.1:6379/".into(),
        tls_cert: pki.cert(),
        ..RedisConfig::default()
    };
    let refused = half.use_tls().expect_err("a certificate without its key");
    assert!(refused.to_string().contains("redis.tls_key"), "{refused}");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let opts = ServeOptions {
        config: ServerConfig {
            tls_cert: pki.cert(),
            ..ServerConfig::default()
        },
        listener,
        shutdown: Shutdown::new(),
    };
    let refused = serve(ServiceSet::default(), opts)
        .await
        .expect_err("a certificate without its key");
    assert!(refused.to_string().contains("server.tls_key"), "{refused}");
}

/// The admin port's answer to `GET path`: its status line.
async fn admin_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("admin");
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut out = String::new();
    conn.read_to_string(&mut out).await.expect("read");
    out.lines().next().unwrap_or_default().to_owned()
}

/// `/readyz`'s status line once it holds `code`, or the last one after 5 s.
async fn readyz_turns(port: u16, code: &str) -> String {
    let mut answer = String::new();
    for _ in 0..50 {
        answer = admin_get(port, "/readyz").await;
        if answer.contains(code) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    answer
}

#[tokio::test]
async fn probes_that_cannot_speak_tls_ask_the_admin_port_whether_the_server_is_ready() {
    let pki = TestPki::new().expect("pki");
    let shutdown = Shutdown::new();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin_port = feed_server::admin::spawn_admin(admin, shutdown.clone())
        .expect("admin")
        .port();
    assert_eq!(
        admin_get(admin_port, "/readyz").await,
        "HTTP/1.1 503 Service Unavailable"
    );
    tls_server(&pki, &shutdown).await;
    assert_eq!(readyz_turns(admin_port, "200").await, "HTTP/1.1 200 OK");
    assert_eq!(admin_get(admin_port, "/healthz").await, "HTTP/1.1 200 OK");
    // Draining (a second server, stopped; the admin port stays up with the
    // first shutdown): out of rotation, as the gRPC health says.
    let drain = Shutdown::new();
    tls_server(&pki, &drain).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain.trigger();
    assert_eq!(
        readyz_turns(admin_port, "503").await,
        "HTTP/1.1 503 Service Unavailable"
    );
}
