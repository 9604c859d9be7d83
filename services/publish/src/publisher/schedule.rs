//! Scheduled items: stored at publish, listed, cancelled and released when due.

use feed_core::{ApiError, UserId};
use feed_proto::publish::v1::{NewActivity, ScheduledActivity};

use super::{Published, Publisher};
use crate::validate::{self};

impl Publisher {
    pub(super) async fn schedule(&self, new: NewActivity, publish_at_ms: i64) -> Result<Published, ApiError> {
        // A cap on state an actor piles up, checked before the write: two
        // schedules at once by one actor can pass it by one each.
        let max = self.cfg.max_scheduled;
        if self.store.list_scheduled(new.actor, "", max).await?.len() >= max {
            return Err(ApiError::ResourceExhausted(format!(
                "publish_at_ms: the actor has the maximum of {max} scheduled items; cancel one first"
            )));
        }
        // The id is minted at release (Invariant 7); the schedule id orders by creation.
        let schedule_id = uuid::Uuid::now_v7().simple().to_string();
        self.store
            .schedule(&ScheduledActivity {
                schedule_id: schedule_id.clone(),
                publish_at_ms,
                activity: Some(new),
            })
            .await?;
        Ok(Published {
            id: 0,
            duplicate: false,
            schedule_id: Some(schedule_id),
            deliveries: vec![],
        })
    }

    /// An actor's scheduled items.
    pub async fn list_scheduled(
        &self,
        actor: UserId,
        after: &str,
        limit: usize,
    ) -> Result<Vec<ScheduledActivity>, ApiError> {
        Ok(self.store.list_scheduled(actor, after, limit).await?)
    }

    /// Cancels a scheduled item.
    pub async fn cancel_scheduled(&self, actor: UserId, schedule_id: &str) -> Result<bool, ApiError> {
        Ok(self.store.remove_scheduled(actor, schedule_id).await?)
    }

    /// Publishes every due scheduled item. Exactly once across replicas and
    /// restarts: the release is an ordinary publish deduplicated by
    /// (actor, foreign_id), and the schedule row goes only after it.
    pub async fn release_due(&self) -> Result<usize, ApiError> {
        let due = self.store.due_scheduled(self.now(), 100).await?;
        let mut released = 0;
        for item in due {
            let Some(new) = item.activity else { continue };
            let actor = new.actor;
            let to = match validate::new_activity(&new, &self.cfg.limits) {
                Ok(to) => to,
                Err(e) => {
                    tracing::warn!(schedule_id = %item.schedule_id, error = %e, "dropping invalid scheduled item");
                    self.store.remove_scheduled(actor, &item.schedule_id).await?;
                    continue;
                }
            };
            // Rights are checked again at release: an actor who left a
            // group since scheduling into it posts there no more.
            match self.authorize_to(actor, &to).await {
                Ok(()) => {}
                Err(e @ ApiError::PermissionDenied(_)) => {
                    tracing::warn!(schedule_id = %item.schedule_id, error = %e, "dropping a scheduled item its actor may no longer post");
                    metrics::counter!("feed_publish_scheduled_refused_total").increment(1);
                    self.store.remove_scheduled(actor, &item.schedule_id).await?;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(schedule_id = %item.schedule_id, error = %e, "release failed; will retry");
                    continue;
                }
            }
            match self.publish_now(new, to).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {
                    self.store.remove_scheduled(actor, &item.schedule_id).await?;
                    released += 1;
                }
                Err(e) => {
                    tracing::warn!(schedule_id = %item.schedule_id, error = %e, "release failed; will retry")
                }
            }
        }
        Ok(released)
    }
}
