//! The recipient policy: whether a notification is accepted, filtered or dropped.

use feed_proto::notify::v1::{PolicyAction, RecipientPolicy, UserState};

use super::Notifier;
use crate::graph::RecipientRelation;

fn strictest(a: i32, b: i32) -> i32 {
    a.max(b)
}

impl Notifier {
    pub(super) fn action_on(&self, state: &UserState, action: &str) -> bool {
        state
            .actions
            .get(action)
            .or_else(|| self.cfg().default_actions.get(action))
            .copied()
            .unwrap_or(true)
    }

    pub(super) fn effective_policy(&self, state: &UserState) -> RecipientPolicy {
        let d = &self.cfg().default_policy;
        let p = state.policy.unwrap_or_default();
        let pick = |mine: i32, default: i32| if mine == 0 { default } else { mine };
        RecipientPolicy {
            strangers: pick(p.strangers, d.strangers),
            new_accounts: pick(p.new_accounts, d.new_accounts),
            unsolicited_mentions: pick(p.unsolicited_mentions, d.unsolicited_mentions),
            muted_users: pick(p.muted_users, d.muted_users),
        }
    }

    /// What the recipient's policy does with a notification from `actor`.
    pub(super) fn decide(
        &self,
        recipient: &UserState,
        rel: RecipientRelation,
        actor: &UserState,
        mention: bool,
    ) -> PolicyAction {
        let p = self.effective_policy(recipient);
        let mut act = PolicyAction::Accept as i32;
        if !rel.recipient_follows {
            act = strictest(act, p.strangers);
            if mention {
                act = strictest(act, p.unsolicited_mentions);
            }
        }
        if rel.recipient_mutes {
            act = strictest(act, p.muted_users);
        }
        let age = (self.now() as i64).saturating_sub(actor.created_at_ms);
        if age < self.cfg().new_account_age_ms as i64 {
            act = strictest(act, p.new_accounts);
        }
        PolicyAction::try_from(act).unwrap_or(PolicyAction::Accept)
    }
}
