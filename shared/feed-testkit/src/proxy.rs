//! A TCP proxy for fault tests: between a service and its dependency, it
//! forwards, goes silent (a peer gone behind sockets that stay open), or
//! refuses (the dependency killed: connections cut, new ones closed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const FORWARD: u8 = 0;
const SILENT: u8 = 1;
const REFUSE: u8 = 2;

/// See the module docs. Runs on the current Tokio runtime.
pub struct TcpProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Connections closed as they opened.
    refused: Arc<AtomicU64>,
    /// Bumped by [`TcpProxy::refuse`]: every open connection is cut.
    cut: watch::Sender<u64>,
}

impl TcpProxy {
    /// A proxy on a free loopback port to `upstream`, forwarding.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let (cut, _) = watch::channel(0u64);
        let accept_mode = mode.clone();
        let accept_cut = cut.clone();
        let refused = Arc::new(AtomicU64::new(0));
        let accept_refused = refused.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accept_mode.load(Ordering::SeqCst) == REFUSE {
                    accept_refused.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                // Silent when it opens: dead from the start.
                let dead = Arc::new(AtomicU8::new(accept_mode.load(Ordering::SeqCst)));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (from, to) in [(cr, sw), (sr, cw)] {
                    tokio::spawn(pipe(
                        from,
                        to,
                        accept_mode.clone(),
                        dead.clone(),
                        accept_cut.subscribe(),
                    ));
                }
            }
        });
        Ok(Self {
            addr,
            mode,
            refused,
            cut,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A `redis://` URL through the proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// How many connections were closed as they opened.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Forwards again; connections that went silent stay dead.
    pub fn forward(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
    }

    /// Drops everything carried from now on, both ways, on every connection,
    /// which stays dead after; the sockets stay open.
    pub fn silence(&self) {
        self.mode.store(SILENT, Ordering::SeqCst);
    }

    /// Cuts every connection and closes new ones as soon as they open.
    pub fn refuse(&self) {
        self.mode.store(REFUSE, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }
}

async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mode: Arc<AtomicU8>,
    dead: Arc<AtomicU8>,
    mut cut: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = cut.changed() => return,
        };
        if mode.load(Ordering::SeqCst) != FORWARD {
            dead.store(SILENT, Ordering::SeqCst);
        }
        if dead.load(Ordering::SeqCst) != FORWARD {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
