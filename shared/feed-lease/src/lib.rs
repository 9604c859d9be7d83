//! Node-id leases for [`feed_core::IdGenerator`], held in Redis.
//!
//! Every replica shares its configuration, so a node id from config would
//! be minted by several replicas at once. Instead each replica claims a free
//! node id at start and renews it; when a renewal finds the lease gone or
//! taken, minting stops at once and the keeper claims another node id.
//!
//! A lease's expiry is kept in its value (`<owner>:<until ms>`, on Redis's
//! clock), not as a Redis TTL: Redis runs with `maxmemory-policy
//! volatile-lru`, which evicts keys that carry a TTL, and an evicted lease
//! would let another process claim the node id while its holder still
//! mints. A claim takes a node id whose key is missing or whose expiry has
//! passed; the holder stops minting a third of the TTL before that expiry.

use std::sync::Arc;
use std::time::Duration;

use feed_core::id::MAX_NODES;
use feed_core::{Clock, IdGenerator, NodeLease};

/// Redis's clock in milliseconds, and whether KEYS[1] is ARGV[1]'s lease.
const PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('GET', KEYS[1])
local mine = held and string.sub(held, 1, #ARGV[1] + 1) == ARGV[1] .. ':'
local function take()
  redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%.0f', now + tonumber(ARGV[2])))
  return 1
end
";
/// Takes the node id if its lease is missing or expired: 1, else 0.
const CLAIM: &str = r"
if held then
  local until_ms = tonumber(string.match(held, ':(%d+)$'))
  -- Without an expiry (an older format, kept alive by a TTL) it stays held.
  if not until_ms or until_ms > now then return 0 end
end
return take()";
/// Extends only our own lease.
const RENEW: &str = r"if mine then return take() end return 0";
/// Releases only our own lease.
const RELEASE: &str = r"if mine then return redis.call('DEL', KEYS[1]) end return 0";

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, extended.
    Renewed,
    /// Gone or someone else's: minting stopped.
    Lost,
}

/// Claims and renews one node id in Redis.
#[derive(Clone)]
pub struct RedisNodeLease {
    conn: feed_redis::Redis,
    prefix: String,
    owner: String,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    generator: IdGenerator,
}

impl RedisNodeLease {
    fn key(&self, node: u16) -> String {
        format!("{}:node-lease:{node}", self.prefix)
    }

    /// Claims a free node id (probing from a random start so replicas
    /// starting together do not race for node 0) and returns the lease
    /// with a generator minting on it.
    pub async fn acquire(
        conn: feed_redis::Redis,
        prefix: &str,
        ttl: Duration,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let owner = uuid::Uuid::new_v4().to_string();
        let generator = IdGenerator::new(
            NodeLease {
                node: 0,
                valid_until_ms: 0,
            },
            clock.clone(),
        );
        let lease = Self {
            conn,
            prefix: prefix.to_owned(),
            owner,
            ttl,
            clock,
            generator,
        };
        lease.claim_any().await?;
        Ok(lease)
    }

    /// The generator minting on this lease.
    pub fn generator(&self) -> IdGenerator {
        self.generator.clone()
    }

    /// The lease deadline for a request sent at `sent_ms`: a third of the TTL
    /// earlier than Redis will expire it, to absorb clock and network skew.
    fn deadline(&self, sent_ms: u64) -> u64 {
        let ttl = self.ttl.as_millis() as u64;
        sent_ms + ttl - ttl / 3
    }

    async fn claim_any(&self) -> anyhow::Result<u16> {
        let start = (uuid::Uuid::new_v4().as_u128() % u128::from(MAX_NODES)) as u16;
        let mut conn = self.conn.clone();
        for i in 0..MAX_NODES {
            let node = (start + i) % MAX_NODES;
            let sent = self.clock.now_ms();
            let claimed: i64 = script(CLAIM)
                .key(self.key(node))
                .arg(&self.owner)
                .arg(self.ttl.as_millis() as u64)
                .invoke_async(&mut conn)
                .await?;
            if claimed == 1 {
                self.generator.set_lease(NodeLease {
                    node,
                    valid_until_ms: self.deadline(sent),
                });
                tracing::info!(node, "node id leased");
                return Ok(node);
            }
        }
        anyhow::bail!("no free node id: all {MAX_NODES} are leased")
    }

    /// Renews once. On loss, minting stops before this returns.
    pub async fn renew(&self) -> anyhow::Result<Renewal> {
        let lease = self.generator.lease();
        let sent = self.clock.now_ms();
        let mut conn = self.conn.clone();
        let renewed: i64 = script(RENEW)
            .key(self.key(lease.node))
            .arg(&self.owner)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        if renewed == 1 {
            self.generator.set_lease(NodeLease {
                node: lease.node,
                valid_until_ms: self.deadline(sent),
            });
            Ok(Renewal::Renewed)
        } else {
            self.generator.set_lease(NodeLease {
                node: lease.node,
                valid_until_ms: 0,
            });
            tracing::warn!(node = lease.node, "node id lease lost; minting stopped");
            Ok(Renewal::Lost)
        }
    }

    /// Claims a new node id after a loss.
    pub async fn reacquire(&self) -> anyhow::Result<u16> {
        self.claim_any().await
    }

    /// Gives the node id back (clean shutdown).
    pub async fn release(&self) -> anyhow::Result<()> {
        let lease = self.generator.lease();
        self.generator.set_lease(NodeLease {
            node: lease.node,
            valid_until_ms: 0,
        });
        let mut conn = self.conn.clone();
        let _: i64 = script(RELEASE)
            .key(self.key(lease.node))
            .arg(&self.owner)
            .arg(0)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Renews every third of the TTL until `stop` resolves; a lost lease is
    /// replaced, a Redis error leaves the lease to lapse (minting stops).
    pub fn spawn_keeper(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let period = self.ttl / 3;
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = &mut stop => {
                        let _ = self.release().await;
                        return;
                    }
                }
                match self.renew().await {
                    Ok(Renewal::Renewed) => {}
                    Ok(Renewal::Lost) => {
                        if let Err(e) = self.reacquire().await {
                            tracing::error!(error = %e, "node id lease not regained");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "node id lease renewal failed"),
                }
            }
        })
    }
}
