//! notify's rules, read from the platform configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use feed_proto::notify::v1::{PolicyAction, RecipientPolicy};

/// notify's rules, from configuration.
#[derive(Debug, Clone)]
pub struct NotifyRules {
    /// Aggregation window of remind groups.
    pub window_ms: u64,
    /// Subscription reason → actions it delivers.
    pub reasons: BTreeMap<String, Vec<String>>,
    /// Per-action defaults (unlisted actions are on).
    pub default_actions: BTreeMap<String, bool>,
    /// Default recipient policy.
    pub default_policy: RecipientPolicy,
    /// Accounts younger than this are new.
    pub new_account_age_ms: u64,
    /// Heartbeat period of Watch.
    pub heartbeat: Duration,
    /// Events buffered per Watch stream.
    pub watch_buffer: usize,
    /// A Watch client whose buffer stays full this long is dropped (it resumes).
    pub slow_client: Duration,
    /// Open Watch streams per user on this replica.
    pub watch_max_per_user: usize,
    /// Open Watch streams on this replica.
    pub watch_max_streams: usize,
    /// Subscribers per remind job page.
    pub remind_page: usize,
    /// Notifications scanned per listing or count.
    pub max_scan: usize,
    /// Subscriptions one user may make with Subscribe.
    pub max_subscriptions: usize,
    /// Most characters of a message or announce body.
    pub max_content_chars: usize,
}

impl Default for NotifyRules {
    fn default() -> Self {
        Self::from_config(&feed_server::config::NotifyConfig::default())
            .unwrap_or_else(|_| unreachable!("the built-in defaults are valid"))
    }
}

fn policy_action(field: &str, s: &str) -> anyhow::Result<i32> {
    Ok(match s {
        "accept" => PolicyAction::Accept,
        "filter" => PolicyAction::Filter,
        "drop" => PolicyAction::Drop,
        other => anyhow::bail!("notify.{field}: {other:?} is not accept, filter or drop"),
    } as i32)
}

impl NotifyRules {
    /// From the platform configuration's `notify` section.
    pub fn from_config(c: &feed_server::config::NotifyConfig) -> anyhow::Result<Self> {
        Ok(Self {
            window_ms: c.group_window_secs.max(1) * 1000,
            reasons: c.reasons.clone(),
            default_actions: c.default_actions.clone(),
            default_policy: RecipientPolicy {
                strangers: policy_action("strangers", &c.strangers)?,
                new_accounts: policy_action("new_accounts", &c.new_accounts)?,
                unsolicited_mentions: policy_action("unsolicited_mentions", &c.unsolicited_mentions)?,
                muted_users: policy_action("muted_users", &c.muted_users)?,
            },
            new_account_age_ms: c.new_account_age_secs * 1000,
            heartbeat: Duration::from_millis(c.heartbeat_ms.max(10)),
            watch_buffer: c.watch_buffer.max(2),
            slow_client: Duration::from_millis(c.slow_client_ms.max(1)),
            watch_max_per_user: c.watch_max_per_user.max(1),
            watch_max_streams: c.watch_max_streams.max(1),
            remind_page: c.remind_page.max(1),
            max_scan: c.max_per_user.max(1),
            max_subscriptions: c.max_subscriptions_per_user.max(1),
            max_content_chars: 4000,
        })
    }

    /// Every action the configuration names (reasons, defaults, mentions).
    pub(super) fn known_actions(&self) -> std::collections::BTreeSet<String> {
        let mut all: std::collections::BTreeSet<String> = self.reasons.values().flatten().cloned().collect();
        all.extend(self.default_actions.keys().cloned());
        all.insert(MENTION.into());
        all
    }
}

/// The action of a remind to a mentioned user.
pub const MENTION: &str = "mention";

/// The object type of the platform's own activities (object id: the
/// activity's id), the one type notify can check visibility of.
pub const ACTIVITY: &str = "activity";
