//! Subscriptions and per-user configuration.

use feed_core::{ApiError, UserId, validate};
use feed_proto::notify::v1::{PolicyAction, RecipientPolicy, Subscription, SubscriptionConfig, UserState};

use super::{ACTIVITY, Notifier, check_name};
use crate::store::ALWAYS;

/// Most actions one user's configuration holds.
const MAX_CONFIGURED_ACTIONS: usize = 100;

impl Notifier {
    /// Subscribe: the reason must be one the configuration knows, and an
    /// activity one the user may see (a followers-only post's likes and
    /// comments are not for everyone who names its id). Only the app itself
    /// (`app`: an internal token) subscribes users to its own object types,
    /// whose readers notify cannot tell.
    pub async fn subscribe(&self, mut s: Subscription, app: bool) -> Result<bool, ApiError> {
        validate::user_id("subscription.user_id", s.user_id)?;
        check_name("subscription.object_type", &s.object_type, 64)?;
        validate::text("subscription.object_id", &s.object_id, 256, false)?;
        if !self.cfg().reasons.contains_key(&s.reason) {
            return Err(ApiError::invalid(
                "subscription.reason",
                format!(
                    "unknown reason {:?}; known: {:?}",
                    s.reason,
                    self.cfg().reasons.keys().collect::<Vec<_>>()
                ),
            ));
        }
        if s.object_type != ACTIVITY && !app {
            return Err(ApiError::PermissionDenied(format!(
                "subscription.object_type: an end user subscribes to activities only; {:?} objects are the app's to subscribe users to",
                s.object_type
            )));
        }
        if s.object_type == ACTIVITY {
            let id = s
                .object_id
                .parse::<u64>()
                .ok()
                .filter(|id| *id != 0)
                .ok_or_else(|| ApiError::invalid("subscription.object_id", "an activity id"))?;
            // A hidden activity answers as a missing one: its existence is
            // not for this user to learn either.
            if !self.inner.activities.visible_to(s.user_id, id).await? {
                return Err(ApiError::NotFound(format!("subscription.object_id: activity {id}")));
            }
        }
        // A cap on state a user piles up, checked before the write (two
        // subscribes at once can pass it by one each); the same
        // subscription again is still answered, unchanged.
        let max = self.cfg().max_subscriptions;
        let held = self.inner.store.subscriptions(s.user_id, None, max).await?;
        if held.len() >= max {
            let again = held
                .iter()
                .any(|h| h.object_type == s.object_type && h.object_id == s.object_id && h.reason == s.reason);
            if !again {
                return Err(ApiError::ResourceExhausted(format!(
                    "subscription: the user has the maximum of {max} subscriptions; unsubscribe from one first"
                )));
            }
        }
        s.created_at_ms = self.now() as i64;
        Ok(self.inner.store.subscribe(&s, ALWAYS).await?)
    }

    /// Unsubscribe from one reason, or every reason when `reason` is empty.
    pub async fn unsubscribe(
        &self,
        user: UserId,
        object_type: &str,
        object_id: &str,
        reason: &str,
    ) -> Result<bool, ApiError> {
        check_name("object_type", object_type, 64)?;
        validate::text("object_id", object_id, 256, false)?;
        validate::text("reason", reason, 64, true)?;
        let reason = (!reason.is_empty()).then_some(reason);
        Ok(self
            .inner
            .store
            .unsubscribe(user, object_type, object_id, reason)
            .await?)
    }

    /// A page of `user`'s subscriptions after `after`.
    pub async fn subscriptions(
        &self,
        user: UserId,
        after: Option<&Subscription>,
        limit: usize,
    ) -> Result<Vec<Subscription>, ApiError> {
        Ok(self.inner.store.subscriptions(user, after, limit).await?)
    }

    /// The user's effective configuration: every known action with its value, the policy with defaults filled in.
    pub async fn config(&self, user: UserId) -> Result<SubscriptionConfig, ApiError> {
        let state = self.state(user).await?;
        Ok(self.effective_config(user, &state))
    }

    fn effective_config(&self, user: UserId, state: &UserState) -> SubscriptionConfig {
        let mut names = self.cfg().known_actions();
        names.extend(state.actions.keys().cloned());
        SubscriptionConfig {
            user_id: user,
            actions: names
                .into_iter()
                .map(|a| {
                    let on = self.action_on(state, &a);
                    (a, on)
                })
                .collect(),
            policy: Some(self.effective_policy(state)),
        }
    }

    /// Sets the listed actions; replaces the policy when given
    /// (`UNSPECIFIED` fields mean "the configured default").
    pub async fn update_config(
        &self,
        user: UserId,
        actions: std::collections::HashMap<String, bool>,
        policy: Option<RecipientPolicy>,
    ) -> Result<SubscriptionConfig, ApiError> {
        if actions.len() > MAX_CONFIGURED_ACTIONS {
            return Err(ApiError::invalid(
                "actions",
                format!("at most {MAX_CONFIGURED_ACTIONS} entries"),
            ));
        }
        for a in actions.keys() {
            check_name(&format!("actions[{a:?}]"), a, 32)?;
        }
        if let Some(p) = &policy {
            for (field, v) in [
                ("policy.strangers", p.strangers),
                ("policy.new_accounts", p.new_accounts),
                ("policy.unsolicited_mentions", p.unsolicited_mentions),
                ("policy.muted_users", p.muted_users),
            ] {
                if PolicyAction::try_from(v).is_err() {
                    return Err(ApiError::invalid(field, format!("unknown policy action {v}")));
                }
            }
        }
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        state.actions.extend(actions);
        // One call names at most 100, and so may the user's whole
        // configuration: calls naming new actions each added up before.
        if state.actions.len() > MAX_CONFIGURED_ACTIONS {
            return Err(ApiError::ResourceExhausted(format!(
                "actions: a user configures at most {MAX_CONFIGURED_ACTIONS} actions"
            )));
        }
        if policy.is_some() {
            state.policy = policy;
        }
        self.inner.store.put_user_state(user, &state).await?;
        Ok(self.effective_config(user, &state))
    }

    /// Records when an account was created.
    pub async fn register_user(&self, user: UserId, created_at_ms: i64) -> Result<(), ApiError> {
        if created_at_ms < 0 {
            return Err(ApiError::invalid("created_at_ms", "must not be negative"));
        }
        let _g = self.lock(user).await;
        let mut state = self.state(user).await?;
        state.created_at_ms = if created_at_ms == 0 {
            self.now() as i64
        } else {
            created_at_ms
        };
        self.inner.store.put_user_state(user, &state).await?;
        Ok(())
    }
}
