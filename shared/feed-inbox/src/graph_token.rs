//! Graph tokens: follow-graph's name for a reader's graph (follows, mutes,
//! blocks either way) as it stands, kept in Redis beside the reader's inbox
//! so that the read of an inbox page also says whether a follow list the
//! timeline holds is still exact, with no call to follow-graph.
//!
//! The protocol (follow-graph issues and withdraws, publish's `ReadHome`
//! reads, the timeline compares):
//!
//! - **Issue** before reading: follow-graph sets the token if none is held
//!   (`SET NX`), then reads the user's graph version; a list the timeline
//!   fetches after that answer holds every change committed before it.
//! - **Withdraw** after writing: every change to a user's graph deletes
//!   their token after it commits and before it is answered. A change that
//!   commits after a list was read withdraws the token that list is held
//!   under, so a token still in Redis means no change was answered since
//!   the list was read: the list is exact (read-your-writes across replicas).
//! - A token expires after [`GRAPH_TOKEN_TTL`] even unwithdrawn: the bound
//!   on a stale list if follow-graph dies between a commit and a withdrawal
//!   it could not make (it retries failed withdrawals while it runs).
//!
//! Losing the keys (a flush, a restart) only costs calls: without a token
//! the timeline asks follow-graph for the version, as without Redis.

use feed_core::UserId;

use crate::InboxError;

/// How long a token lives unwithdrawn.
pub const GRAPH_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Redis key of a user's graph token (same slot as their inbox: one
/// transaction reads both).
pub fn graph_token_key(user: UserId) -> String {
    format!("graph-token:{{{user}}}")
}

/// A token as stored (decimal); None for anything else.
pub(crate) fn parse(value: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(value?).ok()?.parse().ok().filter(|t| *t != 0)
}

/// Issues and withdraws graph tokens on Redis.
#[derive(Clone)]
pub struct GraphTokens {
    conn: feed_redis::Redis,
}

impl GraphTokens {
    /// Tokens on `conn`.
    pub fn new(conn: feed_redis::Redis) -> Self {
        Self { conn }
    }

    /// Connects to `url`, with the inbox reads' short reply timeout: a
    /// token is asked for on a home read's way (and withdrawn on a write's),
    /// so a silent Redis must cost it little.
    pub async fn connect(url: &str) -> Result<Self, InboxError> {
        Ok(Self::new(
            feed_redis::Redis::connect_with(url, crate::redis_store::READ_TIMEOUTS).await?,
        ))
    }

    /// Each user's token, issued now unless one is held (then that one), in
    /// order. Call before reading the graph the tokens name.
    pub async fn issue(&self, users: &[UserId]) -> Result<Vec<u64>, InboxError> {
        if users.is_empty() {
            return Ok(vec![]);
        }
        let fresh: Vec<u64> = users.iter().map(|_| rand::random::<u64>().max(1)).collect();
        let mut pipe = redis::pipe();
        for (user, token) in users.iter().zip(&fresh) {
            pipe.cmd("SET")
                .arg(graph_token_key(*user))
                .arg(token.to_string())
                .arg("NX")
                .arg("GET")
                .arg("PX")
                .arg(GRAPH_TOKEN_TTL.as_millis() as u64);
        }
        let mut conn = self.conn.clone();
        let held: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await?;
        Ok(held
            .iter()
            .zip(fresh)
            // Nil: ours was set. Something unreadable held: no token.
            .map(|(h, fresh)| match h {
                None => fresh,
                Some(v) => parse(Some(v)).unwrap_or(0),
            })
            .collect())
    }

    /// Withdraws the users' tokens. Call after a change to their graphs
    /// commits, before answering it.
    pub async fn withdraw(&self, users: &[UserId]) -> Result<(), InboxError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // One DEL per key: on a Redis Cluster the users' keys are in different slots.
        for user in users {
            pipe.cmd("DEL").arg(graph_token_key(*user)).ignore();
        }
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }
}
