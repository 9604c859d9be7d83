//! ScyllaDB backend.
//!
//! Tables (created by `--migrate`, verified at start):
//! - `nt_events (event_id)`: the event-id ledger, claimed with
//!   `INSERT ... IF NOT EXISTS`.
//! - `nt_announces ((k), id)`: announces, newest first, in one partition
//!   (`k = 0`): they are rare (one a day is 3,650 rows in ten years), and
//!   every listing and count reads their head.
//! - `nt_notes ((user_id), id)`: a user's notifications, newest first.
//! - `nt_groups ((user_id), group_key)`: the note id of each remind group.
//! - `nt_group_actors ((user_id, group_key), actor)`: a group's actor set;
//!   an actor joins with `IF NOT EXISTS`, so only the first delivery of a
//!   (group, actor) changes the note, across replicas and replays.
//! - `nt_users (user_id)`: per-user state (configuration, watermarks).
//! - `nt_subs_by_object ((object_type, object_id), user_id, reason)` and
//!   `nt_subs_by_user ((user_id), object_type, object_id, reason)`.
//! - `nt_jobs ((bucket), job_id)`: unfinished remind jobs (one small
//!   partition: rows live only while a job runs).
//! - `nt_remind_log ((object_type, object_id, action), occurred_at_ms,
//!   job_id)`: recent reminds per object and action, expiring by the
//!   table's `default_time_to_live` (same syntax on ScyllaDB and Cassandra).
//!
//! Statements are prepared once with LOCAL_QUORUM / LOCAL_SERIAL; every
//! multi-row read is paged. The group note itself is rewritten by the
//! replica whose actor insert applied; two replicas adding different actors
//! to one group at the same instant serialise on a lightweight transaction
//! over the note's `seq`.

mod schema;
mod statements;

pub use schema::migrate;
use statements::Statements;

use async_trait::async_trait;
use feed_core::UserId;
use feed_proto::notify::v1::{NoteRecord, RemindJob, Subscription, UserState};
use feed_server::config::ScyllaConfig;
use futures::TryStreamExt;
use prost::Message;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use super::{
    ALWAYS, EventClaim, GroupChange, NotifyStore, Reason, StorageError, Subscriber, add_subscriber_row, id_of,
    merge_actor,
};

/// Bumped when the schema below changes; services refuse an older schema.
pub const SCHEMA_VERSION: i32 = 2;
const COMPONENT: &str = "notify";

fn err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

// Ids and user ids are below 2^63, so the cast keeps bigint order.
fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

/// The ScyllaDB notify store.
pub struct ScyllaNotifyStore {
    session: Session,
    st: Statements,
}

impl ScyllaNotifyStore {
    /// Connects, verifies the schema version and prepares every statement once.
    pub async fn connect(cfg: &ScyllaConfig) -> Result<Self, StorageError> {
        let session = feed_cql::connect_verified(cfg, COMPONENT, SCHEMA_VERSION).await?;
        let st = Statements::prepare(&session, &cfg.keyspace).await?;
        Ok(Self { session, st })
    }

    async fn exec(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<(), StorageError> {
        feed_cql::execute(&self.session, p, v).await?;
        Ok(())
    }

    async fn lwt(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<bool, StorageError> {
        feed_cql::applied(&self.session, p, v).await
    }

    async fn one<T>(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<Option<T>, StorageError>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        feed_cql::first_row(&self.session, p, v).await
    }

    async fn all<T>(&self, p: &PreparedStatement, v: impl SerializeRow) -> Result<Vec<T>, StorageError>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + 'static,
    {
        feed_cql::all_rows(&self.session, p, v).await
    }

    /// The first id from `from` that holds no note of `user`.
    async fn free_note_id(&self, user: UserId, from: u64) -> Result<u64, StorageError> {
        let mut id = from;
        while self.note(user, id).await?.is_some() {
            id = id
                .checked_add(1)
                .ok_or_else(|| StorageError::Backend("note ids exhausted".into()))?;
        }
        Ok(id)
    }

    /// The note id of `user`'s group `key`, if it exists.
    async fn group_id(&self, user: UserId, key: &str) -> Result<Option<u64>, StorageError> {
        Ok(self
            .one::<(i64,)>(&self.st.group_get, (i(user), key))
            .await?
            .map(|(v,)| u(v)))
    }

    fn records(rows: Vec<(Vec<u8>,)>) -> Result<Vec<NoteRecord>, StorageError> {
        rows.into_iter()
            .map(|(b,)| NoteRecord::decode(b.as_slice()).map_err(err))
            .collect()
    }

    async fn object_row_missing(&self, s: &Subscription) -> Result<bool, StorageError> {
        let row = self
            .one::<(Option<i64>,)>(
                &self.st.sub_by_object_get,
                (
                    s.object_type.as_str(),
                    s.object_id.as_str(),
                    i(s.user_id),
                    s.reason.as_str(),
                ),
            )
            .await?;
        Ok(row.is_none())
    }

    fn subscriptions_of(user: UserId, rows: Vec<(String, String, String, Option<i64>)>) -> Vec<Subscription> {
        rows.into_iter()
            .map(|(object_type, object_id, reason, created)| Subscription {
                user_id: user,
                object_type,
                object_id,
                reason,
                created_at_ms: created.unwrap_or(0),
            })
            .collect()
    }
}

#[async_trait]
impl NotifyStore for ScyllaNotifyStore {
    async fn claim_event(&self, event_id: &str, id: u64) -> Result<EventClaim, StorageError> {
        if self.lwt(&self.st.event_claim, (event_id, i(id))).await? {
            return Ok(EventClaim::Claimed);
        }
        let held = self.one::<(i64,)>(&self.st.event_get, (event_id,)).await?;
        Ok(EventClaim::Held(held.map(|(v,)| u(v)).unwrap_or(0)))
    }

    async fn put_announce(&self, rec: &NoteRecord) -> Result<(), StorageError> {
        self.exec(&self.st.announce_put, (i(id_of(rec)), rec.encode_to_vec()))
            .await?;
        Ok(())
    }

    async fn announces(&self, before: u64, limit: usize) -> Result<Vec<NoteRecord>, StorageError> {
        let rows: Vec<(Vec<u8>,)> = self
            .all(&self.st.announce_page, (i(before.min(i64::MAX as u64)), limit as i32))
            .await?;
        Self::records(rows)
    }

    async fn insert_note(&self, user: UserId, rec: &NoteRecord) -> Result<bool, StorageError> {
        self.lwt(
            &self.st.note_insert,
            (i(user), i(id_of(rec)), rec.encode_to_vec(), i(rec.seq)),
        )
        .await
    }

    async fn add_to_group(
        &self,
        user: UserId,
        actor: UserId,
        rec: &NoteRecord,
        keep_latest: usize,
    ) -> Result<GroupChange, StorageError> {
        if !self
            .lwt(&self.st.actor_claim, (i(user), rec.group_key.as_str(), i(actor)))
            .await?
        {
            return Ok(GroupChange::Unchanged);
        }
        // The group's note id: the first delivery's, whoever made it, moved
        // to a free one if another note holds it (ids of one millisecond
        // can collide).
        let mut id = match self.group_id(user, &rec.group_key).await? {
            Some(id) => id,
            None => {
                let proposed = self.free_note_id(user, id_of(rec)).await?;
                if self
                    .lwt(&self.st.group_claim, (i(user), rec.group_key.as_str(), i(proposed)))
                    .await?
                {
                    proposed
                } else {
                    self.group_id(user, &rec.group_key).await?.unwrap_or(proposed)
                }
            }
        };
        loop {
            let existing = self.note(user, id).await?;
            if existing.as_ref().is_some_and(|e| e.group_key != rec.group_key) {
                let free = self.free_note_id(user, id.saturating_add(1)).await?;
                id = if self
                    .lwt(&self.st.group_move, (i(free), i(user), rec.group_key.as_str(), i(id)))
                    .await?
                {
                    free
                } else {
                    self.group_id(user, &rec.group_key).await?.unwrap_or(free)
                };
                continue;
            }
            let old_seq = existing.as_ref().map(|r| r.seq);
            let mut after = merge_actor(existing, rec, actor, keep_latest);
            if let Some(n) = after.note.as_mut() {
                n.id = id;
            }
            let applied = match old_seq {
                None => {
                    self.lwt(
                        &self.st.note_insert,
                        (i(user), i(id), after.encode_to_vec(), i(after.seq)),
                    )
                    .await?
                }
                Some(seq) => {
                    self.lwt(
                        &self.st.note_cas,
                        (after.encode_to_vec(), i(after.seq), i(user), i(id), i(seq)),
                    )
                    .await?
                }
            };
            if applied {
                return Ok(GroupChange::Changed(Box::new(after)));
            }
        }
    }

    async fn note(&self, user: UserId, id: u64) -> Result<Option<NoteRecord>, StorageError> {
        self.one::<(Vec<u8>,)>(&self.st.note_get, (i(user), i(id)))
            .await?
            .map(|(b,)| NoteRecord::decode(b.as_slice()).map_err(err))
            .transpose()
    }

    async fn notes(&self, user: UserId, before: u64, limit: usize) -> Result<Vec<NoteRecord>, StorageError> {
        let rows: Vec<(Vec<u8>,)> = self
            .all(
                &self.st.note_page,
                (i(user), i(before.min(i64::MAX as u64)), limit as i32),
            )
            .await?;
        Self::records(rows)
    }

    async fn mark_notes_read(&self, user: UserId, marks: &[(u64, u64)]) -> Result<(), StorageError> {
        for (id, seq) in marks {
            if let Some(mut rec) = self.note(user, *id).await?
                && rec.read_seq < *seq
            {
                rec.read_seq = *seq;
                self.exec(&self.st.note_put, (i(user), i(*id), rec.encode_to_vec(), i(rec.seq)))
                    .await?;
            }
        }
        Ok(())
    }

    async fn user_state(&self, user: UserId) -> Result<Option<UserState>, StorageError> {
        self.one::<(Vec<u8>,)>(&self.st.user_get, (i(user),))
            .await?
            .map(|(b,)| UserState::decode(b.as_slice()).map_err(err))
            .transpose()
    }

    async fn put_user_state(&self, user: UserId, state: &UserState) -> Result<(), StorageError> {
        self.exec(&self.st.user_put, (i(user), state.encode_to_vec())).await?;
        Ok(())
    }

    async fn subscribe(&self, s: &Subscription, since_ms: i64) -> Result<bool, StorageError> {
        let applied = self
            .lwt(
                &self.st.sub_by_user_claim,
                (
                    i(s.user_id),
                    s.object_type.as_str(),
                    s.object_id.as_str(),
                    s.reason.as_str(),
                    s.created_at_ms,
                ),
            )
            .await?;
        // Re-asserted when this call wrote the user row, so a crash between
        // the two writes heals on a retry; a subscription that already stood
        // keeps its own start.
        if applied || self.object_row_missing(s).await? {
            self.exec(
                &self.st.sub_by_object_put,
                (
                    s.object_type.as_str(),
                    s.object_id.as_str(),
                    i(s.user_id),
                    s.reason.as_str(),
                    since_ms,
                ),
            )
            .await?;
        }
        Ok(applied)
    }

    async fn unsubscribe(
        &self,
        user: UserId,
        object_type: &str,
        object_id: &str,
        reason: Option<&str>,
    ) -> Result<bool, StorageError> {
        let reasons: Vec<(String,)> = self
            .all(&self.st.sub_by_user_list_object, (i(user), object_type, object_id))
            .await?;
        let mut any = false;
        for (r,) in reasons {
            if reason.is_some_and(|want| want != r) {
                continue;
            }
            // The object-side row first: a crash in between leaves a row the user still lists.
            self.exec(
                &self.st.sub_by_object_delete,
                (object_type, object_id, i(user), r.as_str()),
            )
            .await?;
            self.exec(
                &self.st.sub_by_user_delete,
                (i(user), object_type, object_id, r.as_str()),
            )
            .await?;
            any = true;
        }
        Ok(any)
    }

    async fn subscriptions(
        &self,
        user: UserId,
        after: Option<&Subscription>,
        limit: usize,
    ) -> Result<Vec<Subscription>, StorageError> {
        let n = limit as i32;
        let Some(a) = after else {
            let rows = self.all(&self.st.subs_of_user, (i(user), n)).await?;
            return Ok(Self::subscriptions_of(user, rows));
        };
        // Clustering order (type, object, reason): continue within the object,
        // then the type, then the following types.
        let t = a.object_type.as_str();
        let o = a.object_id.as_str();
        let mut out = Self::subscriptions_of(
            user,
            self.all(
                &self.st.subs_of_user_after_reason,
                (i(user), t, o, a.reason.as_str(), n),
            )
            .await?,
        );
        if out.len() < limit {
            let rows = self
                .all(
                    &self.st.subs_of_user_after_object,
                    (i(user), t, o, (limit - out.len()) as i32),
                )
                .await?;
            out.extend(Self::subscriptions_of(user, rows));
        }
        if out.len() < limit {
            let rows = self
                .all(
                    &self.st.subs_of_user_after_type,
                    (i(user), t, (limit - out.len()) as i32),
                )
                .await?;
            out.extend(Self::subscriptions_of(user, rows));
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
        let pager = self
            .session
            .execute_iter(self.st.subscribers_page.clone(), (object_type, object_id, i(after)))
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        let mut rows = pager.rows_stream::<(i64, String, Option<i64>)>().map_err(err)?;
        let mut out: Vec<Subscriber> = Vec::new();
        while let Some((user, name, since)) = rows.try_next().await.map_err(err)? {
            let reason = Reason {
                name,
                since_ms: since.unwrap_or(ALWAYS),
            };
            if !add_subscriber_row(&mut out, u(user), reason, limit) {
                break;
            }
        }
        Ok(out)
    }

    async fn put_job(&self, job: &RemindJob) -> Result<(), StorageError> {
        self.exec(&self.st.job_put, (job.job_id.as_str(), job.encode_to_vec()))
            .await?;
        Ok(())
    }

    async fn put_job_if_absent(&self, job: &RemindJob) -> Result<(), StorageError> {
        self.lwt(&self.st.job_claim, (job.job_id.as_str(), job.encode_to_vec()))
            .await?;
        Ok(())
    }

    async fn job(&self, job_id: &str) -> Result<Option<RemindJob>, StorageError> {
        self.one::<(Vec<u8>,)>(&self.st.job_get, (job_id,))
            .await?
            .map(|(b,)| RemindJob::decode(b.as_slice()).map_err(err))
            .transpose()
    }

    async fn delete_job(&self, job_id: &str) -> Result<(), StorageError> {
        self.exec(&self.st.job_delete, (job_id,)).await?;
        Ok(())
    }

    async fn jobs(&self, limit: usize) -> Result<Vec<RemindJob>, StorageError> {
        let rows: Vec<(Vec<u8>,)> = self.all(&self.st.job_list, (limit as i32,)).await?;
        rows.into_iter()
            .map(|(b,)| RemindJob::decode(b.as_slice()).map_err(err))
            .collect()
    }

    async fn log_remind(&self, job: &RemindJob) -> Result<(), StorageError> {
        let r = job.remind.clone().unwrap_or_default();
        self.exec(
            &self.st.remind_log_put,
            (
                r.object_type.as_str(),
                r.object_id.as_str(),
                r.action.as_str(),
                job.occurred_at_ms,
                job.job_id.as_str(),
                job.encode_to_vec(),
            ),
        )
        .await
    }

    async fn reminds_after(
        &self,
        object_type: &str,
        object_id: &str,
        action: &str,
        after_ms: i64,
        limit: usize,
    ) -> Result<Vec<RemindJob>, StorageError> {
        let rows: Vec<(Vec<u8>,)> = self
            .all(
                &self.st.remind_log_after,
                (object_type, object_id, action, after_ms, limit as i32),
            )
            .await?;
        rows.into_iter()
            .map(|(b,)| RemindJob::decode(b.as_slice()).map_err(err))
            .collect()
    }

    async fn ping(&self) -> Result<(), StorageError> {
        self.session
            .query_unpaged("SELECT now() FROM system.local", ())
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        Ok(())
    }
}
