//! Idempotent internal calls ride out a peer restarting: a call refused
//! by a replica that is going away or coming back is asked again (within
//! the client's retry budget) instead of failing the request it serves.

use std::time::Duration;

use feed_clients::FollowGraphClient;
use feed_e2e::{INTERNAL_TOKEN, TestApp};
use feed_testkit::TcpProxy;

#[tokio::test]
async fn a_read_refused_by_a_restarting_peer_is_asked_again_and_answers() {
    let app = TestApp::start(|_| {}).await;
    let proxy = TcpProxy::start(app.platform.addr).await.expect("proxy");
    // Refusing from the first connection: the peer is restarting.
    proxy.refuse();
    let channel = feed_server::client::balanced(&format!("http://{}", proxy.addr())).expect("channel");
    let client = FollowGraphClient::new(channel, INTERNAL_TOKEN).expect("client");
    // The peer is back as soon as it has refused one connection: only a
    // second attempt can reach it.
    let back = async {
        while proxy.refused() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        proxy.forward();
    };
    let (answer, ()) = tokio::join!(client.graph_version(7), back);
    assert_eq!(answer.expect("answered after the refusal").version, 0);
    assert!(proxy.refused() >= 1);
}
