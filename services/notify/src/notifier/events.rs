//! The activity-event consumer: subscriptions made by posts, reminds raised by
//! reactions and mentions, and catching up a late subscription.

use feed_core::{ApiError, UserId};
use feed_proto::common::v1::{ActivityStatus, Visibility};
use feed_proto::events::v1::{ActivityEvent, activity_event};
use feed_proto::notify::v1::{CreateRemindRequest, Subscription};

use super::{ACTIVITY, MENTION, Notifier, check_name};

/// Most reminds per action a late subscription catches up on.
const CATCH_UP_MAX: usize = 1000;
/// What a subscription's object is, from an activity's `object` field
/// (`type:id`, e.g. `activity:123` or `photo:9`).
fn parse_object(object: &str) -> Option<(&str, &str)> {
    let (t, id) = object.split_once(':')?;
    (check_name("object_type", t, 64).is_ok() && !id.is_empty() && id.len() <= 256).then_some((t, id))
}

/// Verbs that react to an object, and the remind action they raise.
fn reaction(verb: &str) -> Option<&'static str> {
    Some(match verb {
        "like" | "favorite" => "like",
        "comment" | "reply" => "comment",
        "share" | "repost" => "share",
        _ => return None,
    })
}

impl Notifier {
    /// Turns one of publish's activity events into subscriptions and reminds.
    /// Event ids derive from the event's, so a redelivered event is a no-op.
    pub async fn on_activity_event(&self, ev: &ActivityEvent) -> Result<(), ApiError> {
        let Some(a) = ev.activity.as_ref() else {
            return Ok(());
        };
        let change = activity_event::Change::try_from(ev.change).unwrap_or(activity_event::Change::Unspecified);
        let deleted = a.status == ActivityStatus::Deleted as i32;
        let private = a.visibility == Visibility::Private as i32;
        match change {
            activity_event::Change::Created => {
                // Subscribed as of the event, not of its processing: see `catch_up`.
                let own = Subscription {
                    user_id: a.actor,
                    object_type: ACTIVITY.into(),
                    object_id: a.id.to_string(),
                    reason: "create_post".into(),
                    created_at_ms: a.created_at_ms,
                };
                self.inner.store.subscribe(&own, own.created_at_ms).await?;
                self.catch_up(&own).await?;
                let object = parse_object(&a.object);
                let react = reaction(&a.verb);
                if let Some((t, id)) = object {
                    // Whoever creates an object hears about it; whoever reacts follows it.
                    let reason = if react.is_some() {
                        "follow_object"
                    } else {
                        "create_post"
                    };
                    let sub = Subscription {
                        object_type: t.into(),
                        object_id: id.into(),
                        reason: reason.into(),
                        ..own.clone()
                    };
                    self.inner.store.subscribe(&sub, sub.created_at_ms).await?;
                    self.catch_up(&sub).await?;
                }
                if deleted || private {
                    return Ok(());
                }
                if let (Some(action), Some((t, id))) = (react, object) {
                    self.create_remind(CreateRemindRequest {
                        event_id: format!("{}/react", ev.event_id),
                        actor: a.actor,
                        action: action.into(),
                        object_id: id.into(),
                        object_type: t.into(),
                        target: a.target.clone(),
                        recipients: vec![],
                        occurred_at_ms: a.created_at_ms,
                    })
                    .await?;
                }
                let mentioned = self.visible_mentions(a).await?;
                if !mentioned.is_empty() {
                    self.create_remind(CreateRemindRequest {
                        event_id: format!("{}/mention", ev.event_id),
                        actor: a.actor,
                        action: MENTION.into(),
                        object_id: a.id.to_string(),
                        object_type: ACTIVITY.into(),
                        target: a.target.clone(),
                        recipients: mentioned,
                        occurred_at_ms: a.created_at_ms,
                    })
                    .await?;
                }
            }
            activity_event::Change::Updated if !deleted && !private => {
                self.create_remind(CreateRemindRequest {
                    event_id: format!("{}/update", ev.event_id),
                    actor: a.actor,
                    action: "update".into(),
                    object_id: a.id.to_string(),
                    object_type: ACTIVITY.into(),
                    target: String::new(),
                    recipients: vec![],
                    occurred_at_ms: a.updated_at_ms,
                })
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Delivers to a subscription made by an event the reminds on its
    /// object that happened after it but were processed before it (the
    /// event was re-driven late, after a restart or an outage): events take
    /// effect in the order they happened, whatever order they are processed
    /// in. Replays change nothing (a group counts each actor once).
    async fn catch_up(&self, sub: &Subscription) -> Result<(), ApiError> {
        let Some(actions) = self.cfg().reasons.get(&sub.reason) else {
            return Ok(());
        };
        for action in actions {
            let missed = self
                .inner
                .store
                // A remind at the subscription's own instant counts, as in `remind_page`.
                .reminds_after(
                    &sub.object_type,
                    &sub.object_id,
                    action,
                    sub.created_at_ms.saturating_sub(1),
                    CATCH_UP_MAX,
                )
                .await?;
            for job in missed {
                let r = job.remind.unwrap_or_default();
                let direct = r.recipients.contains(&sub.user_id);
                self.deliver(&r, job.occurred_at_ms, &[(sub.user_id, direct)]).await?;
            }
        }
        Ok(())
    }

    /// The mentioned users who may see the activity (a mention never
    /// leaks a followers-only or allow-listed post).
    async fn visible_mentions(&self, a: &feed_proto::common::v1::Activity) -> Result<Vec<UserId>, ApiError> {
        let mut users: Vec<UserId> = a
            .mentions
            .iter()
            .copied()
            .filter(|u| *u != a.actor && *u != 0)
            .collect();
        users.sort_unstable();
        users.dedup();
        users.truncate(100);
        if users.is_empty() {
            return Ok(users);
        }
        let rels = self.inner.graph.relations(a.actor, &users).await?;
        Ok(users
            .into_iter()
            .zip(rels)
            .filter(|(u, rel)| feed_core::visibility::can_see(a, Some(*u), || rel.recipient_follows))
            .map(|(u, _)| u)
            .collect())
    }
}
