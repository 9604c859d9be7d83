//! Embedded backend on fjall. Read-modify-write operations (groups, read
//! marks, subscriptions) take one writer lock and commit one atomic batch,
//! synced to disk, so a group's note, its actor set and the event ledger
//! never disagree after a crash. Keys are big-endian integers and
//! length-prefixed strings, so byte order is the listing order.

use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use feed_core::UserId;
use feed_core::keys::{u64_at, u64_pair};
use feed_proto::notify::v1::{NoteRecord, RemindJob, Subscription, UserState};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode};
use prost::Message;

use super::{
    ALWAYS, EventClaim, GroupChange, NotifyStore, REMIND_LOG_RETENTION_MS, Reason, StorageError, Subscriber,
    add_subscriber_row, id_of, merge_actor,
};

/// The embedded notify store.
pub struct EmbeddedNotifyStore {
    db: Database,
    /// event id → notification id
    events: Keyspace,
    /// id → NoteRecord
    announces: Keyspace,
    /// user ‖ id → NoteRecord
    notes: Keyspace,
    /// user ‖ str(group key) → note id
    groups: Keyspace,
    /// user ‖ str(group key) ‖ actor → ()
    actors: Keyspace,
    /// user → UserState
    users: Keyspace,
    /// user ‖ str(type) ‖ str(object) ‖ str(reason) → created ms
    subs_by_user: Keyspace,
    /// str(type) ‖ str(object) ‖ user ‖ str(reason) → ()
    subs_by_object: Keyspace,
    /// job id → RemindJob
    jobs: Keyspace,
    /// str(type) ‖ str(object) ‖ str(action) ‖ occurred ms ‖ job id → RemindJob
    remind_log: Keyspace,
    writer: Mutex<()>,
    sync: bool,
}

fn be(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

/// `len(u16) ‖ bytes`: the length keeps `a` from prefixing `ab`.
fn push_str(k: &mut Vec<u8>, s: &str) {
    k.extend_from_slice(&(s.len() as u16).to_be_bytes());
    k.extend_from_slice(s.as_bytes());
}

/// Reads a length-prefixed string at `*at`, advancing it.
fn read_str(k: &[u8], at: &mut usize) -> Result<String, StorageError> {
    let len = k
        .get(*at..*at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or_else(|| be("short key"))?;
    let s = k.get(*at + 2..*at + 2 + len).ok_or_else(|| be("short key"))?;
    *at += 2 + len;
    String::from_utf8(s.to_vec()).map_err(be)
}

fn group_key(user: UserId, group: &str) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    push_str(&mut k, group);
    k
}

fn object_prefix(object_type: &str, object_id: &str) -> Vec<u8> {
    let mut k = Vec::new();
    push_str(&mut k, object_type);
    push_str(&mut k, object_id);
    k
}

fn by_u64_pair(user: UserId, object_type: &str, object_id: &str, reason: &str) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    push_str(&mut k, object_type);
    push_str(&mut k, object_id);
    push_str(&mut k, reason);
    k
}

fn by_object_key(object_type: &str, object_id: &str, user: UserId, reason: &str) -> Vec<u8> {
    let mut k = object_prefix(object_type, object_id);
    k.extend_from_slice(&user.to_be_bytes());
    push_str(&mut k, reason);
    k
}

fn remind_log_prefix(object_type: &str, object_id: &str, action: &str) -> Vec<u8> {
    let mut k = object_prefix(object_type, object_id);
    push_str(&mut k, action);
    k
}

/// Times are offset by 2^63 so that byte order is time order for every i64.
fn time_key(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn decode<M: Message + Default>(v: &[u8]) -> Result<M, StorageError> {
    M::decode(v).map_err(be)
}

impl EmbeddedNotifyStore {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let db = Database::builder(dir)
            .open()
            .map_err(|e| StorageError::opening(dir, e))?;
        let ks = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(be);
        Ok(Self {
            events: ks("nt_events")?,
            announces: ks("nt_announces")?,
            notes: ks("nt_notes")?,
            groups: ks("nt_groups")?,
            actors: ks("nt_actors")?,
            users: ks("nt_users")?,
            subs_by_user: ks("nt_subs_by_user")?,
            subs_by_object: ks("nt_subs_by_object")?,
            jobs: ks("nt_jobs")?,
            remind_log: ks("nt_remind_log")?,
            db,
            writer: Mutex::new(()),
            sync: true,
        })
    }

    /// Whether acknowledged writes are fsynced (default true).
    pub fn with_sync(mut self, sync: bool) -> Self {
        self.sync = sync;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is the database, which batches keep consistent.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit(&self, batch: OwnedWriteBatch) -> Result<(), StorageError> {
        batch.commit().map_err(be)?;
        // Durable before the caller hears "done".
        if self.sync {
            self.db.persist(PersistMode::SyncAll).map_err(be)?;
        }
        Ok(())
    }

    fn get<M: Message + Default>(ks: &Keyspace, key: &[u8]) -> Result<Option<M>, StorageError> {
        ks.get(key).map_err(be)?.map(|v| decode(&v)).transpose()
    }

    /// Records of `ks` under `prefix` with an 8-byte id key suffix < `before`, newest first.
    fn scan_desc(ks: &Keyspace, prefix: &[u8], before: u64, limit: usize) -> Result<Vec<NoteRecord>, StorageError> {
        let mut start = prefix.to_vec();
        start.extend_from_slice(&0u64.to_be_bytes());
        let mut end = prefix.to_vec();
        end.extend_from_slice(&before.to_be_bytes());
        let mut out = Vec::new();
        for item in ks.range(start..end).rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item.into_inner().map_err(be)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl NotifyStore for EmbeddedNotifyStore {
    async fn claim_event(&self, event_id: &str, id: u64) -> Result<EventClaim, StorageError> {
        let _w = self.lock();
        if let Some(v) = self.events.get(event_id.as_bytes()).map_err(be)? {
            return Ok(EventClaim::Held(u64_at(&v, 0)));
        }
        let mut batch = self.db.batch();
        batch.insert(&self.events, event_id.as_bytes(), id.to_be_bytes());
        self.commit(batch)?;
        Ok(EventClaim::Claimed)
    }

    async fn put_announce(&self, rec: &NoteRecord) -> Result<(), StorageError> {
        let id = rec.note.as_ref().map(|n| n.id).unwrap_or(0);
        let mut batch = self.db.batch();
        batch.insert(&self.announces, id.to_be_bytes(), rec.encode_to_vec());
        self.commit(batch)
    }

    async fn announces(&self, before: u64, limit: usize) -> Result<Vec<NoteRecord>, StorageError> {
        Self::scan_desc(&self.announces, &[], before, limit)
    }

    async fn insert_note(&self, user: UserId, rec: &NoteRecord) -> Result<bool, StorageError> {
        let id = rec.note.as_ref().map(|n| n.id).unwrap_or(0);
        let key = u64_pair(user, id);
        let _w = self.lock();
        if self.notes.contains_key(key).map_err(be)? {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        batch.insert(&self.notes, key, rec.encode_to_vec());
        self.commit(batch)?;
        Ok(true)
    }

    async fn add_to_group(
        &self,
        user: UserId,
        actor: UserId,
        rec: &NoteRecord,
        keep_latest: usize,
    ) -> Result<GroupChange, StorageError> {
        let gkey = group_key(user, &rec.group_key);
        let mut akey = gkey.clone();
        akey.extend_from_slice(&actor.to_be_bytes());
        let _w = self.lock();
        if self.actors.contains_key(&akey).map_err(be)? {
            return Ok(GroupChange::Unchanged);
        }
        let existing: Option<NoteRecord> = match self.groups.get(&gkey).map_err(be)? {
            Some(id) => Self::get(&self.notes, &u64_pair(user, u64_at(&id, 0)))?,
            None => None,
        };
        let mut after = merge_actor(existing.clone(), rec, actor, keep_latest);
        if existing.is_none() {
            // A new group never takes the id of another note (ids of one
            // millisecond can collide): the first free one from its own.
            let mut id = id_of(&after);
            while self.notes.contains_key(u64_pair(user, id)).map_err(be)? {
                id = id
                    .checked_add(1)
                    .ok_or_else(|| StorageError::Backend("note ids exhausted".into()))?;
            }
            if let Some(n) = after.note.as_mut() {
                n.id = id;
            }
        }
        let id = id_of(&after);
        let mut batch = self.db.batch();
        batch.insert(&self.actors, akey, []);
        batch.insert(&self.groups, gkey, id.to_be_bytes());
        batch.insert(&self.notes, u64_pair(user, id), after.encode_to_vec());
        self.commit(batch)?;
        Ok(GroupChange::Changed(Box::new(after)))
    }

    async fn note(&self, user: UserId, id: u64) -> Result<Option<NoteRecord>, StorageError> {
        Self::get(&self.notes, &u64_pair(user, id))
    }

    async fn notes(&self, user: UserId, before: u64, limit: usize) -> Result<Vec<NoteRecord>, StorageError> {
        Self::scan_desc(&self.notes, &user.to_be_bytes(), before, limit)
    }

    async fn mark_notes_read(&self, user: UserId, marks: &[(u64, u64)]) -> Result<(), StorageError> {
        let _w = self.lock();
        let mut batch = self.db.batch();
        for (id, seq) in marks {
            let key = u64_pair(user, *id);
            if let Some(mut rec) = Self::get::<NoteRecord>(&self.notes, &key)? {
                rec.read_seq = rec.read_seq.max(*seq);
                batch.insert(&self.notes, key, rec.encode_to_vec());
            }
        }
        self.commit(batch)
    }

    async fn user_state(&self, user: UserId) -> Result<Option<UserState>, StorageError> {
        Self::get(&self.users, &user.to_be_bytes())
    }

    async fn put_user_state(&self, user: UserId, state: &UserState) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.insert(&self.users, user.to_be_bytes(), state.encode_to_vec());
        self.commit(batch)
    }

    async fn subscribe(&self, s: &Subscription, since_ms: i64) -> Result<bool, StorageError> {
        let ukey = by_u64_pair(s.user_id, &s.object_type, &s.object_id, &s.reason);
        let _w = self.lock();
        if self.subs_by_user.contains_key(&ukey).map_err(be)? {
            return Ok(false);
        }
        let mut batch = self.db.batch();
        batch.insert(&self.subs_by_user, ukey, s.created_at_ms.to_be_bytes());
        batch.insert(
            &self.subs_by_object,
            by_object_key(&s.object_type, &s.object_id, s.user_id, &s.reason),
            since_ms.to_be_bytes(),
        );
        self.commit(batch)?;
        Ok(true)
    }

    async fn unsubscribe(
        &self,
        user: UserId,
        object_type: &str,
        object_id: &str,
        reason: Option<&str>,
    ) -> Result<bool, StorageError> {
        let mut prefix = user.to_be_bytes().to_vec();
        push_str(&mut prefix, object_type);
        push_str(&mut prefix, object_id);
        let _w = self.lock();
        let mut batch = self.db.batch();
        let mut any = false;
        for item in self.subs_by_user.prefix(&prefix) {
            let (k, _) = item.into_inner().map_err(be)?;
            let mut at = prefix.len();
            let r = read_str(&k, &mut at)?;
            if reason.is_some_and(|want| want != r) {
                continue;
            }
            batch.remove(&self.subs_by_user, k.to_vec());
            batch.remove(&self.subs_by_object, by_object_key(object_type, object_id, user, &r));
            any = true;
        }
        if any {
            self.commit(batch)?;
        }
        Ok(any)
    }

    async fn subscriptions(
        &self,
        user: UserId,
        after: Option<&Subscription>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StorageError> {
        let prefix = user.to_be_bytes();
        let mut out = Vec::new();
        let start = match after {
            // Just after the last key listed.
            Some(a) => {
                let mut k = by_u64_pair(user, &a.object_type, &a.object_id, &a.reason);
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let mut end = prefix.to_vec();
        end.push(0xFF);
        for item in self.subs_by_user.range(start..end) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.into_inner().map_err(be)?;
            let mut at = 8;
            let object_type = read_str(&k, &mut at)?;
            let object_id = read_str(&k, &mut at)?;
            let reason = read_str(&k, &mut at)?;
            out.push(Subscription {
                user_id: user,
                object_type,
                object_id,
                reason,
                created_at_ms: u64_at(&v, 0) as i64,
            });
        }
        Ok(out)
    }

    async fn subscribers(
        &self,
        object_type: &str,
        object_id: &str,
        after: UserId,
        limit: usize,
    ) -> Result<Vec<Subscriber>, StorageError> {
        let prefix = object_prefix(object_type, object_id);
        let mut start = prefix.clone();
        start.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        let mut end = prefix.clone();
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut out: Vec<Subscriber> = Vec::new();
        for item in self.subs_by_object.range(start..end) {
            let (k, v) = item.into_inner().map_err(be)?;
            let user = u64_at(&k, prefix.len());
            let mut at = prefix.len() + 8;
            let reason = Reason {
                name: read_str(&k, &mut at)?,
                // Rows written before the start was kept count always.
                since_ms: if v.len() == 8 { u64_at(&v, 0) as i64 } else { ALWAYS },
            };
            if !add_subscriber_row(&mut out, user, reason, limit) {
                break;
            }
        }
        Ok(out)
    }

    async fn put_job(&self, job: &RemindJob) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.insert(&self.jobs, job.job_id.as_bytes(), job.encode_to_vec());
        self.commit(batch)
    }

    async fn put_job_if_absent(&self, job: &RemindJob) -> Result<(), StorageError> {
        let _w = self.lock();
        if self.jobs.contains_key(job.job_id.as_bytes()).map_err(be)? {
            return Ok(());
        }
        let mut batch = self.db.batch();
        batch.insert(&self.jobs, job.job_id.as_bytes(), job.encode_to_vec());
        self.commit(batch)
    }

    async fn job(&self, job_id: &str) -> Result<Option<RemindJob>, StorageError> {
        Self::get(&self.jobs, job_id.as_bytes())
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.remove(&self.jobs, job_id.as_bytes());
        self.commit(batch)
    }

    async fn jobs(&self, limit: usize) -> Result<Vec<RemindJob>, StorageError> {
        let mut out = Vec::new();
        for item in self.jobs.iter().take(limit) {
            let (_, v) = item.into_inner().map_err(be)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    async fn log_remind(&self, job: &RemindJob) -> Result<(), StorageError> {
        let r = job.remind.clone().unwrap_or_default();
        let prefix = remind_log_prefix(&r.object_type, &r.object_id, &r.action);
        let mut key = prefix.clone();
        key.extend_from_slice(&time_key(job.occurred_at_ms));
        key.extend_from_slice(job.job_id.as_bytes());
        let mut cutoff = prefix.clone();
        cutoff.extend_from_slice(&time_key(job.occurred_at_ms.saturating_sub(REMIND_LOG_RETENTION_MS)));
        let _w = self.lock();
        let mut batch = self.db.batch();
        // What has aged out of the log goes with each write to it.
        for item in self.remind_log.range(prefix..cutoff) {
            let (k, _) = item.into_inner().map_err(be)?;
            batch.remove(&self.remind_log, k);
        }
        batch.insert(&self.remind_log, key, job.encode_to_vec());
        self.commit(batch)
    }

    async fn reminds_after(
        &self,
        object_type: &str,
        object_id: &str,
        action: &str,
        after_ms: i64,
        limit: usize,
    ) -> Result<Vec<RemindJob>, StorageError> {
        let prefix = remind_log_prefix(object_type, object_id, action);
        let mut from = prefix.clone();
        from.extend_from_slice(&time_key(after_ms.saturating_add(1)));
        let mut out = Vec::new();
        for item in self.remind_log.range(from..) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.into_inner().map_err(be)?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
