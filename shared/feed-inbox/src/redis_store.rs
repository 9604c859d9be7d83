//! Inboxes on Redis (or Redis Cluster): one Lua script per write, so an
//! inbox's entries and its floor always change together; a page reads
//! both in one transaction.
//!
//! A live inbox also holds [`LIVE_MARK`], a member above every id. The
//! floor and the set are two keys, and under `maxmemory-policy
//! volatile-lru` Redis may evict one without the other: a floor whose set
//! was evicted would claim an empty inbox complete, and the reader would
//! miss every pushed item until the floor expired (never, for an active
//! user). So a floor counts only with the mark beside it; without it the
//! inbox is dead and the next read rebuilds it. While a rebuild runs the
//! set holds [`BUILDING_MARK`] instead: pushes land, reads wait for the
//! live mark.

use async_trait::async_trait;
use feed_core::UserId;

use crate::{InboxError, InboxLimits, InboxPage, InboxStore};

/// A page's transaction reply: floor, live mark, ids, graph token.
type PageReply = (Option<Vec<u8>>, Option<f64>, Vec<Vec<u8>>, Option<Vec<u8>>);

/// `lt(x, y)` for two 8-byte big-endian ids, for scripts. Lua's `<` on
/// strings uses strcoll, which stops at NUL bytes and follows the locale, so
/// unpack to integers.
pub const LUA_ID_LT: &str = r"
local function lt(x, y)
  local xh, xl = struct.unpack('>I4>I4', x)
  local yh, yl = struct.unpack('>I4>I4', y)
  if xh ~= yh then return xh < yh end
  return xl < yl
end
";

/// The live mark and the trim every inbox write ends with (scripts put
/// [`LUA_ID_LT`] before it).
const INBOX_LUA: &str = r"
local MARK = '\255'
local BUILDING = '\255\0'
local function trim_key(inbox, floorkey, cap)
  -- The live (or building) mark is one of the members (the highest:
  -- trimming from the low end never removes it).
  local n = redis.call('ZCARD', inbox) - 1
  if n > cap then
    redis.call('ZREMRANGEBYRANK', inbox, 0, n - cap - 1)
    local min = redis.call('ZRANGE', inbox, 0, 0)[1]
    local floor = redis.call('GET', floorkey)
    if lt(floor, min) then redis.call('SET', floorkey, min, 'KEEPTTL') end
  elseif n == 0 then
    -- The set was just created (by a push after it was evicted, so without
    -- the mark; the inbox reads as dead): it expires with its floor key.
    local ttl = redis.call('PTTL', floorkey)
    if ttl > 0 then redis.call('PEXPIRE', inbox, ttl) end
  end
end
local function trim(cap)
  trim_key(KEYS[1], KEYS[2], cap)
end
";

/// KEYS: inbox, floor. ARGV: cap, raise-floor-to ("" = no), ids... Adds to a live inbox only.
const ADD: &str = r"
local floor = redis.call('GET', KEYS[2])
if not floor then return -1 end
if ARGV[2] ~= '' and lt(floor, ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
  floor = ARGV[2]
end
local added = 0
for i = 3, #ARGV do
  if not lt(ARGV[i], floor) then added = added + redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
end
trim(tonumber(ARGV[1]))
return added
";

/// KEYS: inbox1, floor1, inbox2, floor2... ARGV: cap, id. One id into many
/// live inboxes in one call (fanout on a single Redis, where scripts may
/// touch keys of any slot). It skips the floor comparison, the costliest
/// step per user: a fresh id is above every floor in practice, and an id
/// below one is never served (pages stop at the floor) and is trimmed first.
const PUSH_MANY: &str = r"
local cap = tonumber(ARGV[1])
local m = ARGV[2]
local n = 0
for i = 1, #KEYS, 2 do
  local floor = redis.call('GET', KEYS[i + 1])
  if floor then
    n = n + 1
    redis.call('ZADD', KEYS[i], 0, m)
    trim_key(KEYS[i], KEYS[i + 1], cap)
  end
end
return n
";

/// KEYS: inbox, floor. ARGV: cap, ttl_ms, floor, provisional ("" = none), ids...
const REBUILD: &str = r"
local cur = redis.call('GET', KEYS[2])
-- A floor without the mark lost its set: it guarantees nothing.
if cur and not redis.call('ZSCORE', KEYS[1], MARK) then cur = false end
local floor = ARGV[3]
if cur and cur ~= ARGV[4] and lt(cur, floor) then floor = cur end
redis.call('SET', KEYS[2], floor, 'PX', ARGV[2])
redis.call('ZREM', KEYS[1], BUILDING)
redis.call('ZADD', KEYS[1], 0, MARK)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 5, #ARGV do
  if not lt(ARGV[i], floor) then redis.call('ZADD', KEYS[1], 0, ARGV[i]) end
end
trim(tonumber(ARGV[1]))
return 1
";

/// KEYS: inbox, floor. ARGV: provisional floor, ttl_ms. Opens the inbox to
/// pushes (the floor key) while it is rebuilt, unless it is live or being
/// rebuilt already; 1 when this call did. The set holds the building mark,
/// not the live one, until the rebuild lands: pages and liveness ignore it
/// meanwhile, since it lacks what was pushed before the marker.
const MARK_LIVE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 and (redis.call('ZSCORE', KEYS[1], MARK) or redis.call('ZSCORE', KEYS[1], BUILDING)) then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('ZREM', KEYS[1], MARK)
redis.call('ZADD', KEYS[1], 0, BUILDING)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// The member that marks a live inbox: one byte above the first byte of
/// every id (ids keep their top bit 0), so it sorts after all of them and
/// pages below `(\xff` never see it.
pub const LIVE_MARK: &[u8] = &[0xFF];

/// The member that marks an inbox being rebuilt: pushes land in it, pages
/// do not read it (it sorts above [`LIVE_MARK`], so above every id too).
pub const BUILDING_MARK: &[u8] = &[0xFF, 0x00];

/// Redis key of a user's inbox.
pub fn inbox_key(user: UserId) -> String {
    format!("inbox:{{{user}}}")
}

/// Redis key of a user's inbox floor (the liveness marker).
pub fn floor_key(user: UserId) -> String {
    format!("inbox-floor:{{{user}}}")
}

fn member(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Users per pipeline: large enough to amortise round trips, small enough
/// not to stall Redis for other clients.
const PIPELINE: usize = 512;

/// A read is two or three commands that take microseconds: a reply later
/// than this means Redis is in trouble, and the read goes degraded.
pub(crate) const READ_TIMEOUTS: feed_redis::Timeouts = feed_redis::Timeouts {
    connect: std::time::Duration::from_millis(300),
    response: std::time::Duration::from_millis(150),
};

/// Inboxes in Redis.
#[derive(Clone)]
pub struct RedisInbox {
    conn: feed_redis::Redis,
    /// What a home read waits on (page, liveness, activity): its own
    /// connection with a short reply timeout, so a read answers degraded
    /// well within a second when Redis goes silent; scripts that fan out
    /// to many inboxes keep the longer one.
    reads: feed_redis::Redis,
    cfg: InboxLimits,
    add: redis::Script,
    push_many: redis::Script,
    rebuild: redis::Script,
    mark_live: redis::Script,
}

impl RedisInbox {
    /// Inboxes on `conn` sized by `cfg`.
    pub fn new(conn: feed_redis::Redis, cfg: InboxLimits) -> Self {
        Self::with_reads(conn.clone(), conn, cfg)
    }

    /// Inboxes with reads on their own connection.
    fn with_reads(conn: feed_redis::Redis, reads: feed_redis::Redis, cfg: InboxLimits) -> Self {
        Self {
            conn,
            reads,
            cfg,
            add: redis::Script::new(&format!("{LUA_ID_LT}{INBOX_LUA}{ADD}")),
            push_many: redis::Script::new(&format!("{LUA_ID_LT}{INBOX_LUA}{PUSH_MANY}")),
            rebuild: redis::Script::new(&format!("{LUA_ID_LT}{INBOX_LUA}{REBUILD}")),
            mark_live: redis::Script::new(&format!("{LUA_ID_LT}{INBOX_LUA}{MARK_LIVE}")),
        }
    }

    /// Connects to `url`.
    pub async fn connect(url: &str, cfg: InboxLimits) -> Result<Self, InboxError> {
        let conn = feed_redis::Redis::connect(url).await?;
        let reads = feed_redis::Redis::connect_with(url, READ_TIMEOUTS).await?;
        Ok(Self::with_reads(conn, reads, cfg))
    }

    /// A page, and the graph token when asked, in one transaction.
    async fn read_page(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
        with_token: bool,
    ) -> Result<(Option<InboxPage>, Option<u64>), InboxError> {
        let max: Vec<u8> = match before {
            Some(b) => {
                let mut v = vec![b'('];
                v.extend_from_slice(&member(b));
                v
            }
            // Every id, not the live mark above them.
            None => vec![b'(', LIVE_MARK[0]],
        };
        let inbox = inbox_key(user);
        let mut conn = self.reads.clone();
        // One transaction, not a script: the floor and the page stay
        // consistent, and Redis spends a third of a script call on it.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(floor_key(user))
            .cmd("ZSCORE")
            .arg(&inbox)
            .arg(LIVE_MARK)
            .cmd("ZRANGE")
            .arg(&inbox)
            .arg(max)
            .arg("-")
            .arg("BYLEX")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        if with_token {
            pipe.cmd("GET").arg(crate::graph_token::graph_token_key(user));
        }
        let (floor, mark, ids, token): PageReply = if with_token {
            pipe.query_async(&mut conn).await?
        } else {
            let (f, m, i) = pipe.query_async(&mut conn).await?;
            (f, m, i, None)
        };
        let page = floor.filter(|_| mark.is_some()).map(|floor| {
            let floor = id_of(&floor).unwrap_or(0);
            InboxPage {
                floor,
                // Below the floor the outboxes answer, not the inbox.
                ids: ids.iter().filter_map(|m| id_of(m)).filter(|id| *id >= floor).collect(),
            }
        });
        Ok((page, crate::graph_token::parse(token.as_deref())))
    }

    /// Loads the scripts, so pipelined EVALSHA finds them (again after a
    /// Redis restart, which forgets scripts).
    async fn load_scripts(&self) -> Result<(), InboxError> {
        let mut conn = self.conn.clone();
        for s in [&self.add, &self.push_many, &self.rebuild, &self.mark_live] {
            let _: String = s.prepare_invoke().load_async(&mut conn).await?;
        }
        Ok(())
    }

    async fn pipelined_add(
        &self,
        users: &[UserId],
        ids: &[u64],
        raise_floor: Option<u64>,
    ) -> Result<Vec<i64>, InboxError> {
        let raise: Vec<u8> = raise_floor.map(|f| member(f).to_vec()).unwrap_or_default();
        let mut out = Vec::with_capacity(users.len());
        for chunk in users.chunks(PIPELINE) {
            let build = || {
                let mut pipe = redis::pipe();
                for &u in chunk {
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(self.add.get_hash())
                        .arg(2)
                        .arg(inbox_key(u))
                        .arg(floor_key(u))
                        .arg(self.cfg.cap)
                        .arg(raise.as_slice());
                    for id in ids {
                        cmd.arg(&member(*id)[..]);
                    }
                    pipe.add_command(cmd);
                }
                pipe
            };
            let mut conn = self.conn.clone();
            let res: Result<Vec<i64>, redis::RedisError> = build().query_async(&mut conn).await;
            let res = match res {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    self.load_scripts().await?;
                    build().query_async(&mut conn).await?
                }
                other => other?,
            };
            out.extend(res);
        }
        Ok(out)
    }
}

#[async_trait]
impl InboxStore for RedisInbox {
    async fn push(&self, users: &[UserId], id: u64) -> Result<usize, InboxError> {
        if !self.cfg.cluster {
            // One script call per chunk of users: the per-call cost of Lua
            // dominates a one-member ZADD, so batching is most of fanout speed.
            let mut delivered = 0usize;
            for chunk in users.chunks(PIPELINE) {
                let mut inv = self.push_many.prepare_invoke();
                for &u in chunk {
                    inv.key(inbox_key(u)).key(floor_key(u));
                }
                inv.arg(self.cfg.cap).arg(&member(id)[..]);
                let mut conn = self.conn.clone();
                let n: i64 = inv.invoke_async(&mut conn).await?;
                delivered += n as usize;
            }
            return Ok(delivered);
        }
        // Redis Cluster: keys of one call must share a slot, so one call per user, pipelined.
        Ok(self
            .pipelined_add(users, &[id], None)
            .await?
            .iter()
            .filter(|r| **r >= 0)
            .count())
    }

    async fn backfill(&self, user: UserId, ids: &[u64], floor: u64) -> Result<bool, InboxError> {
        Ok(self
            .pipelined_add(&[user], ids, Some(floor))
            .await?
            .first()
            .is_some_and(|r| *r >= 0))
    }

    async fn mark_live(&self, user: UserId, provisional_floor: u64) -> Result<bool, InboxError> {
        let mut conn = self.conn.clone();
        let created: i64 = self
            .mark_live
            .key(inbox_key(user))
            .key(floor_key(user))
            .arg(&member(provisional_floor)[..])
            .arg(self.cfg.ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(created == 1)
    }

    async fn rebuild(&self, user: UserId, ids: &[u64], floor: u64, provisional: Option<u64>) -> Result<(), InboxError> {
        let mut conn = self.conn.clone();
        let mut inv = self.rebuild.key(inbox_key(user));
        let provisional: Vec<u8> = provisional.map(|p| member(p).to_vec()).unwrap_or_default();
        inv.key(floor_key(user))
            .arg(self.cfg.cap)
            .arg(self.cfg.ttl_ms)
            .arg(&member(floor)[..])
            .arg(provisional.as_slice());
        for id in ids {
            inv.arg(&member(*id)[..]);
        }
        let _: i64 = inv.invoke_async(&mut conn).await?;
        Ok(())
    }

    async fn page(&self, user: UserId, before: Option<u64>, limit: usize) -> Result<Option<InboxPage>, InboxError> {
        Ok(self.read_page(user, before, limit, false).await?.0)
    }

    async fn page_with_graph_token(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Option<InboxPage>, Option<u64>), InboxError> {
        self.read_page(user, before, limit, true).await
    }

    async fn remove(&self, user: UserId, ids: &[u64]) -> Result<(), InboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(inbox_key(user));
        for id in ids {
            cmd.arg(&member(*id)[..]);
        }
        let _: i64 = cmd.query_async(&mut conn).await?;
        Ok(())
    }

    async fn remove_from(&self, users: &[UserId], id: u64) -> Result<(), InboxError> {
        for chunk in users.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for &u in chunk {
                pipe.cmd("ZREM").arg(inbox_key(u)).arg(&member(id)[..]).ignore();
            }
            let mut conn = self.conn.clone();
            let _: () = pipe.query_async(&mut conn).await?;
        }
        Ok(())
    }

    async fn touch(&self, user: UserId) -> Result<bool, InboxError> {
        let mut conn = self.reads.clone();
        let (live, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("PEXPIRE")
            .arg(floor_key(user))
            .arg(self.cfg.ttl_ms)
            .cmd("PEXPIRE")
            .arg(inbox_key(user))
            .arg(self.cfg.ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(live == 1)
    }

    async fn is_live(&self, user: UserId) -> Result<bool, InboxError> {
        let mut conn = self.reads.clone();
        let (floor, mark): (i64, Option<f64>) = redis::pipe()
            .atomic()
            .cmd("EXISTS")
            .arg(floor_key(user))
            .cmd("ZSCORE")
            .arg(inbox_key(user))
            .arg(LIVE_MARK)
            .query_async(&mut conn)
            .await?;
        Ok(floor == 1 && mark.is_some())
    }

    async fn evict(&self, user: UserId) -> Result<(), InboxError> {
        let mut conn = self.conn.clone();
        // Marker first: a concurrent push after this sees a dead inbox.
        let _: i64 = redis::cmd("DEL").arg(floor_key(user)).query_async(&mut conn).await?;
        let _: i64 = redis::cmd("DEL").arg(inbox_key(user)).query_async(&mut conn).await?;
        Ok(())
    }
}
