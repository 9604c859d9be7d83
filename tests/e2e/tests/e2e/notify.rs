//! Notifications end to end: real gRPC, a real redis-server for the live
//! log and the activity event stream.

use std::sync::Arc;
use std::time::Duration;

use feed_e2e::{TestApp, bff, internal};
use feed_proto::followgraph::v1 as fg;
use feed_proto::notify::v1 as nt;
use feed_proto::notify::v1::notify_service_client::NotifyServiceClient;
use feed_proto::publish::v1 as pb;
use feed_server::{Authenticator, Role, ServeOptions, ServiceSet, Shutdown};
use notify::live::EventId;
use tonic::Code;
use tonic::transport::Channel;

feed_e2e::area_env!();

async fn env_with(tune: impl FnOnce(&mut feed_server::FeedConfig)) -> Env {
    Env(TestApp::start(tune).await)
}

async fn env() -> Env {
    env_with(|_| {}).await
}

fn remind(event: &str, actor: u64, action: &str, object: &str) -> nt::CreateRemindRequest {
    nt::CreateRemindRequest {
        event_id: event.into(),
        actor,
        action: action.into(),
        object_id: object.into(),
        // The app's own objects (an activity would have to exist and be
        // visible to each subscriber).
        object_type: "post".into(),
        ..Default::default()
    }
}

impl Env {
    async fn subscribe(&mut self, user: u64, object: &str, reason: &str) {
        self.notify
            .subscribe(internal(nt::SubscribeRequest {
                subscription: Some(nt::Subscription {
                    user_id: user,
                    object_id: object.into(),
                    object_type: "post".into(),
                    reason: reason.into(),
                    created_at_ms: 0,
                }),
            }))
            .await
            .expect("subscribe");
    }

    async fn set_policy(&mut self, user: u64, policy: nt::RecipientPolicy) {
        self.notify
            .update_subscription_config(internal(nt::UpdateSubscriptionConfigRequest {
                user_id: user,
                actions: Default::default(),
                policy: Some(policy),
            }))
            .await
            .expect("policy");
    }

    async fn list(&mut self, user: u64, filtered: bool) -> Vec<nt::Notification> {
        self.notify
            .list_notifications(internal(nt::ListNotificationsRequest {
                user_id: user,
                filtered,
                limit: 100,
                ..Default::default()
            }))
            .await
            .expect("list")
            .into_inner()
            .notifications
    }

    async fn unread(&mut self, user: u64, kind: nt::NotificationKind) -> (u64, u64) {
        let counts = self
            .notify
            .get_unread_counts(internal(nt::GetUnreadCountsRequest { user_id: user }))
            .await
            .expect("counts")
            .into_inner()
            .counts;
        counts
            .iter()
            .find(|c| c.kind == kind as i32)
            .map(|c| (c.unread, c.unseen))
            .unwrap_or_default()
    }

    async fn message(&mut self, event: &str, sender: u64, recipient: u64, text: &str) -> Result<u64, tonic::Status> {
        self.notify
            .send_message(internal(nt::SendMessageRequest {
                event_id: event.into(),
                sender,
                recipient,
                content: text.into(),
            }))
            .await
            .map(|r| r.into_inner().notification_id)
    }

    async fn publish(&mut self, actor: u64, verb: &str, object: &str, mentions: Vec<u64>) -> u64 {
        self.publish
            .publish(internal(pb::PublishRequest {
                activity: Some(pb::NewActivity {
                    actor,
                    verb: verb.into(),
                    object: object.into(),
                    foreign_id: format!("{actor}-{verb}-{object}"),
                    mentions,
                    ..Default::default()
                }),
                ..Default::default()
            }))
            .await
            .expect("publish")
            .into_inner()
            .activity_id
    }

    /// Polls until `check` holds for `user`'s list (events are asynchronous).
    async fn eventually(&mut self, user: u64, what: &str, check: impl Fn(&[nt::Notification]) -> bool) {
        for _ in 0..200 {
            if check(&self.list(user, false).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{what}: not reached; list is {:?}", self.list(user, false).await);
    }
}

async fn next_notification(stream: &mut tonic::Streaming<nt::WatchEvent>) -> (String, nt::Notification) {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("an event within the timeout")
            .expect("stream ok")
            .expect("stream open");
        if let Some(nt::watch_event::Event::Notification(n)) = ev.event {
            return (ev.event_id, n);
        }
    }
}

#[tokio::test]
async fn the_three_kinds_reach_their_recipients() {
    let mut e = env().await;
    let (id, dup) = {
        let r = e
            .notify
            .create_announce(internal(nt::CreateAnnounceRequest {
                event_id: "ann-1".into(),
                title: "Maintenance".into(),
                content: "Tonight 22:00 UTC".into(),
                links: vec![nt::Link {
                    title: "status".into(),
                    url: "https://status.example/1".into(),
                }],
                for_all_time: false,
            }))
            .await
            .expect("announce")
            .into_inner();
        (r.notification_id, r.duplicate)
    };
    assert!(id > 0 && !dup);
    e.subscribe(1, "post-1", "create_post").await;
    let r = e
        .notify
        .create_remind(internal(remind("like-1", 2, "like", "post-1")))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!((r.recipients, r.duplicate, r.pending), (1, false, false));
    let msg = e
        .message("msg-1", 3, 1, "hi there\nsecond line")
        .await
        .expect("message");
    let list = e.list(1, false).await;
    let kinds: Vec<i32> = list.iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        vec![
            nt::NotificationKind::Message as i32,
            nt::NotificationKind::Remind as i32,
            nt::NotificationKind::Announce as i32
        ],
        "newest first, all three kinds"
    );
    assert_eq!(list[0].id, msg);
    assert_eq!(list[0].sender, 3);
    assert_eq!(list[1].latest_actors, vec![2]);
    assert_eq!(list[2].title, "Maintenance");
    // The actor never hears about their own action.
    assert!(
        e.list(2, false)
            .await
            .iter()
            .all(|n| n.kind != nt::NotificationKind::Remind as i32)
    );
}

#[tokio::test]
async fn five_likes_form_one_entry_counted_once_per_actor() {
    let mut e = env().await;
    e.subscribe(1, "post-9", "create_post").await;
    for actor in [10, 11, 12, 13, 14] {
        e.notify
            .create_remind(internal(remind(&format!("like-{actor}"), actor, "like", "post-9")))
            .await
            .expect("remind");
    }
    // A retried event and a second like by the same actor change nothing.
    let again = e
        .notify
        .create_remind(internal(remind("like-12", 12, "like", "post-9")))
        .await
        .expect("replay")
        .into_inner();
    assert!(again.duplicate);
    e.notify
        .create_remind(internal(remind("like-12-b", 12, "like", "post-9")))
        .await
        .expect("same actor again");
    let list = e.list(1, false).await;
    assert_eq!(list.len(), 1, "one aggregated entry: {list:?}");
    let n = &list[0];
    assert_eq!(n.actor_count, 5);
    assert_eq!(n.latest_actors, vec![14, 13, 12, 11, 10]);
    assert!(!n.read);
    assert_eq!(e.unread(1, nt::NotificationKind::Remind).await, (1, 1));
    e.notify
        .mark_read(internal(nt::MarkReadRequest {
            user_id: 1,
            ids: vec![n.id],
            ..Default::default()
        }))
        .await
        .expect("mark read");
    assert_eq!(e.unread(1, nt::NotificationKind::Remind).await, (0, 1));
    e.notify
        .mark_seen(internal(nt::MarkSeenRequest { user_id: 1 }))
        .await
        .expect("mark seen");
    assert_eq!(e.unread(1, nt::NotificationKind::Remind).await, (0, 0));
    // A new actor changes the group after it was read: unread again.
    e.notify
        .create_remind(internal(remind("like-15", 15, "like", "post-9")))
        .await
        .expect("remind");
    assert_eq!(e.unread(1, nt::NotificationKind::Remind).await, (1, 1));
    let n = &e.list(1, false).await[0];
    assert_eq!((n.actor_count, n.latest_actors[0]), (6, 15));
}

#[tokio::test]
async fn likes_published_as_activities_notify_the_author_through_events() {
    let mut e = env().await;
    let post = e.publish(1, "post", "photo:1", vec![]).await;
    let object = format!("activity:{post}");
    for actor in [20, 21, 22] {
        e.publish(actor, "like", &object, vec![]).await;
    }
    e.eventually(1, "three likes aggregated", |l| {
        l.iter().any(|n| n.action == "like" && n.actor_count == 3)
    })
    .await;
    // A mention in a public post reminds the mentioned user.
    e.publish(23, "post", "note:5", vec![2]).await;
    e.eventually(2, "mention", |l| l.iter().any(|n| n.action == "mention"))
        .await;
    // Publishing subscribed the author to their activity.
    let subs = e
        .notify
        .list_subscriptions(internal(nt::ListSubscriptionsRequest {
            user_id: 1,
            ..Default::default()
        }))
        .await
        .expect("subscriptions")
        .into_inner()
        .subscriptions;
    assert!(
        subs.iter()
            .any(|s| s.object_id == post.to_string() && s.reason == "create_post")
    );
}

#[tokio::test]
async fn config_turning_like_off_stops_like_reminds() {
    let mut e = env().await;
    e.subscribe(1, "post-2", "create_post").await;
    let cfg = e
        .notify
        .update_subscription_config(internal(nt::UpdateSubscriptionConfigRequest {
            user_id: 1,
            actions: [("like".to_string(), false)].into(),
            policy: None,
        }))
        .await
        .expect("update")
        .into_inner();
    assert_eq!(cfg.actions.get("like"), Some(&false));
    assert_eq!(cfg.actions.get("comment"), Some(&true), "defaults fill in");
    let r = e
        .notify
        .create_remind(internal(remind("like-a", 2, "like", "post-2")))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!(r.recipients, 0);
    e.notify
        .create_remind(internal(remind("comment-a", 2, "comment", "post-2")))
        .await
        .expect("remind");
    let list = e.list(1, false).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].action, "comment");
}

#[tokio::test]
async fn an_announce_is_seen_by_every_user_and_new_users_only_see_lasting_ones() {
    let mut e = env().await;
    // Users 1 and 2 exist before the announce.
    for u in [1, 2] {
        e.list(u, false).await;
    }
    for (event, for_all_time) in [("a-1", false), ("a-2", true)] {
        e.notify
            .create_announce(internal(nt::CreateAnnounceRequest {
                event_id: event.into(),
                title: event.into(),
                for_all_time,
                ..Default::default()
            }))
            .await
            .expect("announce");
    }
    for u in [1, 2] {
        assert_eq!(e.list(u, false).await.len(), 2);
        assert_eq!(e.unread(u, nt::NotificationKind::Announce).await, (2, 2));
    }
    // An account created after the announces sees only the lasting one.
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
        + 60_000;
    e.notify
        .register_user(internal(nt::RegisterUserRequest {
            user_id: 3,
            created_at_ms: later,
        }))
        .await
        .expect("register");
    let titles: Vec<String> = e.list(3, false).await.into_iter().map(|n| n.title).collect();
    assert_eq!(titles, vec!["a-2".to_string()]);
    // Read state is per user.
    e.notify
        .mark_read(internal(nt::MarkReadRequest {
            user_id: 1,
            all: true,
            ..Default::default()
        }))
        .await
        .expect("mark all");
    assert_eq!(e.unread(1, nt::NotificationKind::Announce).await.0, 0);
    assert_eq!(e.unread(2, nt::NotificationKind::Announce).await.0, 2);
    // A retried announce is not stored twice.
    let dup = e
        .notify
        .create_announce(internal(nt::CreateAnnounceRequest {
            event_id: "a-1".into(),
            title: "a-1".into(),
            ..Default::default()
        }))
        .await
        .expect("retry")
        .into_inner();
    assert!(dup.duplicate);
    assert_eq!(e.list(2, false).await.len(), 2);
}

#[tokio::test]
async fn a_filter_policy_keeps_a_strangers_message_out_of_the_unread_count() {
    let mut e = env().await;
    e.set_policy(
        1,
        nt::RecipientPolicy {
            strangers: nt::PolicyAction::Filter as i32,
            ..Default::default()
        },
    )
    .await;
    e.follow(1, "user:2").await;
    e.message("m-friend", 2, 1, "from a friend").await.expect("friend");
    e.message("m-stranger", 9, 1, "from a stranger")
        .await
        .expect("stranger");
    assert_eq!(e.unread(1, nt::NotificationKind::Message).await.0, 1);
    let main: Vec<u64> = e.list(1, false).await.iter().map(|n| n.sender).collect();
    assert_eq!(main, vec![2]);
    let filtered = e.list(1, true).await;
    assert_eq!(filtered.len(), 1);
    assert!(filtered[0].filtered && filtered[0].sender == 9);
    // A new account (registered just now) is filtered when the policy says so, even when followed.
    e.notify
        .register_user(internal(nt::RegisterUserRequest {
            user_id: 5,
            created_at_ms: 0,
        }))
        .await
        .expect("register");
    e.follow(1, "user:5").await;
    e.set_policy(
        1,
        nt::RecipientPolicy {
            strangers: nt::PolicyAction::Filter as i32,
            new_accounts: nt::PolicyAction::Filter as i32,
            ..Default::default()
        },
    )
    .await;
    e.message("m-new", 5, 1, "from a new account")
        .await
        .expect("new account");
    assert_eq!(e.unread(1, nt::NotificationKind::Message).await.0, 1);
    assert_eq!(e.list(1, true).await.len(), 2);
    // Drop: the sender hears nothing; the recipient gets nothing.
    e.set_policy(
        1,
        nt::RecipientPolicy {
            strangers: nt::PolicyAction::Drop as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(e.message("m-dropped", 8, 1, "dropped").await.expect("accepted call"), 0);
    assert_eq!(e.list(1, true).await.len(), 2);
}

#[tokio::test]
async fn unsolicited_mentions_follow_their_own_policy() {
    let mut e = env().await;
    e.set_policy(
        1,
        nt::RecipientPolicy {
            unsolicited_mentions: nt::PolicyAction::Drop as i32,
            ..Default::default()
        },
    )
    .await;
    e.follow(1, "user:2").await;
    let mention = |event: &str, actor: u64| nt::CreateRemindRequest {
        recipients: vec![1],
        ..remind(event, actor, "mention", &format!("post-{event}"))
    };
    let stranger = e
        .notify
        .create_remind(internal(mention("m-stranger", 9)))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!(stranger.recipients, 0, "a stranger's mention is dropped");
    let friend = e
        .notify
        .create_remind(internal(mention("m-friend", 2)))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!(friend.recipients, 1, "a followed user's mention is delivered");
    // Other reminds from the stranger are not mentions: the strangers rule (accept) applies.
    e.subscribe(1, "post-x", "create_post").await;
    let like = e
        .notify
        .create_remind(internal(remind("l-stranger", 9, "like", "post-x")))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!(like.recipients, 1);
    let actions: Vec<String> = e.list(1, false).await.into_iter().map(|n| n.action).collect();
    assert_eq!(actions.len(), 2, "{actions:?}");
}

#[tokio::test]
async fn a_blocked_sender_is_refused() {
    let mut e = env().await;
    e.graph
        .block(internal(fg::BlockRequest {
            user_id: 1,
            target_user_id: 2,
        }))
        .await
        .expect("block");
    let err = e.message("m-b", 2, 1, "hello").await.expect_err("blocked");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(e.list(1, false).await.is_empty());
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let mut e = env().await;
    let empty = e.message("m-1", 2, 1, "   ").await.expect_err("empty");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("content"), "{}", empty.message());
    let long = e.message("m-2", 2, 1, &"x".repeat(4001)).await.expect_err("long");
    assert_eq!(long.code(), Code::InvalidArgument);
    assert!(long.message().contains("content"));
    let kind = e
        .notify
        .list_notifications(internal(nt::ListNotificationsRequest {
            user_id: 1,
            kinds: vec![42],
            ..Default::default()
        }))
        .await
        .expect_err("unknown kind");
    assert_eq!(kind.code(), Code::InvalidArgument);
    assert!(kind.message().contains("kinds[0]"));
    let no_event = e
        .notify
        .create_remind(internal(remind("", 2, "like", "post-1")))
        .await
        .expect_err("no event id");
    assert!(no_event.message().contains("event_id"));
    let bad_action = e
        .notify
        .create_remind(internal(remind("r-x", 2, "Like!", "post-1")))
        .await
        .expect_err("bad action");
    assert!(bad_action.message().contains("action"));
    let bad_reason = e
        .notify
        .subscribe(internal(nt::SubscribeRequest {
            subscription: Some(nt::Subscription {
                user_id: 1,
                object_id: "x".into(),
                object_type: "activity".into(),
                reason: "because".into(),
                created_at_ms: 0,
            }),
        }))
        .await
        .expect_err("unknown reason");
    assert!(bad_reason.message().contains("subscription.reason"));
    let nothing = e
        .notify
        .mark_read(internal(nt::MarkReadRequest {
            user_id: 1,
            ..Default::default()
        }))
        .await
        .expect_err("nothing to mark");
    assert!(nothing.message().contains("ids"));
    let resume = e
        .notify
        .watch(internal(nt::WatchRequest {
            user_id: 1,
            resume_after: "yesterday".into(),
        }))
        .await
        .expect_err("bad resume id");
    assert!(resume.message().contains("resume_after"));
}

#[tokio::test]
async fn a_bff_token_may_only_read_its_own_users_notifications() {
    let mut e = env().await;
    let err = e
        .notify
        .list_notifications(bff(
            nt::ListNotificationsRequest {
                user_id: 2,
                ..Default::default()
            },
            1,
        ))
        .await
        .expect_err("other user");
    assert_eq!(err.code(), Code::PermissionDenied);
    e.notify
        .list_notifications(bff(
            nt::ListNotificationsRequest {
                user_id: 1,
                ..Default::default()
            },
            1,
        ))
        .await
        .expect("own");
    let watch = e
        .notify
        .watch(bff(
            nt::WatchRequest {
                user_id: 2,
                resume_after: String::new(),
            },
            1,
        ))
        .await
        .expect_err("other user's stream");
    assert_eq!(watch.code(), Code::PermissionDenied);
    let announce = e
        .notify
        .create_announce(bff(
            nt::CreateAnnounceRequest {
                event_id: "x".into(),
                title: "x".into(),
                ..Default::default()
            },
            1,
        ))
        .await
        .expect_err("announces are internal");
    assert_eq!(announce.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_large_subscriber_set_is_delivered_by_jobs() {
    let mut e = env_with(|cfg| cfg.notify.remind_page = 2).await;
    for u in 1..=7 {
        e.subscribe(u, "post-big", "create_post").await;
    }
    let r = e
        .notify
        .create_remind(internal(remind("big-1", 100, "comment", "post-big")))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!(r.recipients, 2, "the first page in the call");
    assert!(r.pending);
    for u in 1..=7 {
        e.eventually(u, "every subscriber reached", |l| l.len() == 1).await;
    }
}

/// A notify replica outside feedd: its own server and live log
/// connection, sharing the store and the redis-server with the others.
async fn replica(
    store: Arc<dyn notify::NotifyStore>,
    redis_url: &str,
    platform: Channel,
    shutdown: &Shutdown,
) -> NotifyServiceClient<Channel> {
    let mut cfg = feed_server::FeedConfig::default();
    cfg.redis.url = redis_url.into();
    let live = notify::open_live(&cfg).await.expect("live");
    let jobs = notify::open_jobs(&cfg).await.expect("jobs");
    let graph =
        Arc::new(feed_clients::FollowGraphClient::new(platform.clone(), feed_e2e::INTERNAL_TOKEN).expect("graph"));
    let activities = Arc::new(notify::GrpcPublish::new(platform, feed_e2e::INTERNAL_TOKEN).expect("activities"));
    let peers = notify::Peers { graph, activities };
    let notifier = notify::notifier(&cfg, store, live, peers, jobs, shutdown.clone()).expect("notifier");
    let auth = Authenticator::new([(feed_e2e::INTERNAL_TOKEN.to_owned(), Role::Internal)]);
    let mut set = ServiceSet::default();
    notify::register(&mut set, notifier, &auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    cfg.server.admin_listen = String::new();
    tokio::spawn(feed_server::serve(
        set,
        ServeOptions {
            config: cfg.server.clone(),
            listener,
            shutdown: shutdown.clone(),
        },
    ));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    feed_e2e::wait_serving(channel.clone(), notify::SERVICE_NAME, Duration::from_secs(10))
        .await
        .expect("serving");
    NotifyServiceClient::new(channel)
}

#[tokio::test]
async fn watch_receives_a_message_sent_through_another_replica_and_resumes_exactly() {
    let e = env().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn notify::NotifyStore> =
        Arc::new(notify::store::embedded::EmbeddedNotifyStore::open(dir.path()).expect("store"));
    let shutdown = Shutdown::new();
    let url = e.redis.url();
    let mut a = replica(store.clone(), &url, e.platform.channel.clone(), &shutdown).await;
    let mut b = replica(store, &url, e.platform.channel.clone(), &shutdown).await;
    let watch = |c: &mut NotifyServiceClient<Channel>, resume: String| {
        let mut c = c.clone();
        async move {
            c.watch(internal(nt::WatchRequest {
                user_id: 1,
                resume_after: resume,
            }))
            .await
            .expect("watch")
            .into_inner()
        }
    };
    let send = |c: &mut NotifyServiceClient<Channel>, event: &str| {
        let mut c = c.clone();
        let event = event.to_owned();
        async move {
            c.send_message(internal(nt::SendMessageRequest {
                event_id: event.clone(),
                sender: 2,
                recipient: 1,
                content: event,
            }))
            .await
            .expect("send")
        }
    };
    let mut stream = watch(&mut a, String::new()).await;
    send(&mut b, "first").await;
    let (first_id, n) = next_notification(&mut stream).await;
    assert_eq!(
        n.content, "first",
        "a message sent through replica b reaches a watcher on a"
    );
    // Disconnect; two messages arrive meanwhile; resume on the other replica.
    drop(stream);
    send(&mut a, "second").await;
    send(&mut b, "third").await;
    let mut resumed = watch(&mut b, first_id).await;
    let (_, n2) = next_notification(&mut resumed).await;
    let (third_id, n3) = next_notification(&mut resumed).await;
    assert_eq!((n2.content.as_str(), n3.content.as_str()), ("second", "third"));
    // Exactly the missed ones: nothing else is pending, the next live one follows.
    send(&mut a, "fourth").await;
    let (fourth_id, n4) = next_notification(&mut resumed).await;
    assert_eq!(n4.content, "fourth");
    assert!(EventId::parse(&fourth_id) > EventId::parse(&third_id));
    shutdown.trigger();
}

#[tokio::test]
async fn watch_sends_heartbeats_and_ends_with_unavailable_on_shutdown() {
    let mut e = env_with(|cfg| cfg.notify.heartbeat_ms = 100).await;
    let mut stream = e
        .notify
        .watch(internal(nt::WatchRequest {
            user_id: 1,
            resume_after: String::new(),
        }))
        .await
        .expect("watch")
        .into_inner();
    let ev = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("heartbeat in time")
        .expect("ok")
        .expect("open");
    assert!(matches!(ev.event, Some(nt::watch_event::Event::Heartbeat(_))));
    let stop = tokio::spawn(e.0.stop());
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("the stream ends on shutdown")
        {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = end.expect_err("ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    stop.await.expect("join").expect("drained");
}

#[tokio::test]
async fn reminds_caused_by_a_muted_user_are_kept_filtered_unless_the_user_says_otherwise() {
    let mut e = env().await;
    e.subscribe(1, "post-m", "create_post").await;
    e.follow(1, "user:2").await;
    e.graph
        .mute(internal(fg::MuteRequest {
            user_id: 1,
            target_user_id: 2,
        }))
        .await
        .expect("mute");
    let outcome = e
        .notify
        .create_remind(internal(remind("m-like", 2, "like", "post-m")))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!(outcome.recipients, 1, "kept, not dropped");
    assert!(e.list(1, false).await.is_empty(), "not among the accepted ones");
    let filtered = e.list(1, true).await;
    assert_eq!(filtered.len(), 1);
    assert!(filtered[0].filtered && filtered[0].latest_actors == [2]);
    assert_eq!(e.unread(1, nt::NotificationKind::Remind).await.0, 0);
    // A user who wants them anyway accepts them; one who does not, drops them.
    e.set_policy(
        1,
        nt::RecipientPolicy {
            muted_users: nt::PolicyAction::Accept as i32,
            ..Default::default()
        },
    )
    .await;
    e.notify
        .create_remind(internal(remind("m-comment", 2, "comment", "post-m")))
        .await
        .expect("remind");
    let accepted = e.list(1, false).await;
    assert_eq!(
        accepted.iter().map(|n| n.action.as_str()).collect::<Vec<_>>(),
        ["comment"]
    );
    e.set_policy(
        1,
        nt::RecipientPolicy {
            muted_users: nt::PolicyAction::Drop as i32,
            ..Default::default()
        },
    )
    .await;
    let dropped = e
        .notify
        .create_remind(internal(remind("m-share", 2, "share", "post-m")))
        .await
        .expect("remind")
        .into_inner();
    assert_eq!(dropped.recipients, 0);
    // Someone else's reminds are untouched by the mute.
    e.notify
        .create_remind(internal(remind("o-share", 3, "share", "post-m")))
        .await
        .expect("remind");
    let shares: Vec<Vec<u64>> = e
        .list(1, false)
        .await
        .into_iter()
        .filter(|n| n.action == "share")
        .map(|n| n.latest_actors)
        .collect();
    assert_eq!(shares, [[3]]);
    e.0.stop().await.expect("stop");
}

#[tokio::test]
async fn a_remind_dated_in_the_future_is_dated_now_and_cannot_pin_itself_on_top() {
    let mut e = env().await;
    let year_2100 = 4_102_444_800_000i64;
    let mut pinned = remind("future-1", 70, "like", "post-a");
    pinned.recipients = vec![71];
    pinned.occurred_at_ms = year_2100;
    e.notify.create_remind(internal(pinned)).await.expect("remind");
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut later = remind("future-2", 72, "like", "post-b");
    later.recipients = vec![71];
    e.notify.create_remind(internal(later)).await.expect("remind");
    let notes = e.list(71, false).await;
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes.iter().all(|n| n.updated_at_ms <= after + 60_000),
        "no note is dated in the future: {notes:?}"
    );
    assert_eq!(
        notes[0].latest_actors,
        vec![72],
        "the newer note is on top, not the one claiming 2100: {notes:?}"
    );
}

#[tokio::test]
async fn an_end_user_cannot_forge_a_remind() {
    let mut e = env().await;
    let mut forged = remind("forged-1", 80, "like", "post-z");
    forged.recipients = vec![81];
    let err = e
        .notify
        .create_remind(bff(forged, 80))
        .await
        .expect_err("a bff token may not create reminds");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(e.list(81, false).await.is_empty(), "nothing was delivered");
}

#[tokio::test]
async fn a_users_event_id_cannot_swallow_another_senders_message() {
    let mut e = env().await;
    let send = |sender: u64, text: &str| {
        bff(
            nt::SendMessageRequest {
                event_id: "msg-1".into(),
                sender,
                recipient: 92,
                content: text.into(),
            },
            sender,
        )
    };
    let first = e
        .notify
        .send_message(send(90, "from 90"))
        .await
        .expect("90 sends")
        .into_inner();
    let second = e
        .notify
        .send_message(send(91, "from 91"))
        .await
        .expect("91 sends")
        .into_inner();
    assert!(!second.duplicate && second.notification_id != 0, "{second:?}");
    assert_ne!(first.notification_id, second.notification_id);
    let replay = e
        .notify
        .send_message(send(91, "from 91"))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(
        (replay.notification_id, replay.duplicate),
        (second.notification_id, true),
        "the sender's own replay is still a duplicate"
    );
    let mut texts: Vec<String> = e.list(92, false).await.into_iter().map(|n| n.content).collect();
    texts.sort();
    assert_eq!(texts, vec!["from 90", "from 91"], "both messages reached the recipient");
}

/// A subscription to an activity is for users who may see it: a
/// followers-only post's likes and comments are not for everyone who
/// names its id. The app's own objects are the app's to subscribe users to.
#[tokio::test]
async fn an_end_user_subscribes_only_to_activities_they_may_see() {
    let mut e = env().await;
    let hidden = e
        .publish
        .publish(internal(pb::PublishRequest {
            activity: Some(pb::NewActivity {
                actor: 1,
                verb: "post".into(),
                object: "note:1".into(),
                foreign_id: "followers-only".into(),
                visibility: feed_proto::common::v1::Visibility::Followers as i32,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .expect("publish")
        .into_inner()
        .activity_id;
    let public = e.publish(1, "post", "note:2", vec![]).await;
    e.graph
        .follow(internal(fg::FollowRequest {
            follower_id: 3,
            feed: "user:1".into(),
        }))
        .await
        .expect("follow");
    let sub = |user: u64, object_type: &str, object_id: String| {
        bff(
            nt::SubscribeRequest {
                subscription: Some(nt::Subscription {
                    user_id: user,
                    object_id,
                    object_type: object_type.into(),
                    reason: "follow_object".into(),
                    created_at_ms: 0,
                }),
            },
            user,
        )
    };

    let err = e
        .notify
        .subscribe(sub(2, "activity", hidden.to_string()))
        .await
        .expect_err("a stranger to a followers-only post");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let unknown = e
        .notify
        .subscribe(sub(2, "activity", "999999".into()))
        .await
        .expect_err("no such activity");
    assert_eq!(unknown.code(), Code::NotFound, "hidden and missing answer alike");
    let malformed = e
        .notify
        .subscribe(sub(2, "activity", "post-1".into()))
        .await
        .expect_err("not an id");
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().contains("subscription.object_id"), "{malformed:?}");
    let app_object = e
        .notify
        .subscribe(sub(2, "photo", "9".into()))
        .await
        .expect_err("the app's object");
    assert_eq!(app_object.code(), Code::PermissionDenied);
    assert!(
        app_object.message().contains("subscription.object_type"),
        "{app_object:?}"
    );

    assert!(
        e.notify
            .subscribe(sub(2, "activity", public.to_string()))
            .await
            .expect("a public post")
            .into_inner()
            .changed
    );
    assert!(
        e.notify
            .subscribe(sub(3, "activity", hidden.to_string()))
            .await
            .expect("a follower to the followers-only post")
            .into_inner()
            .changed
    );
    // The app (internal token) subscribes users to its own objects.
    e.notify
        .subscribe(internal(nt::SubscribeRequest {
            subscription: Some(nt::Subscription {
                user_id: 2,
                object_id: "9".into(),
                object_type: "photo".into(),
                reason: "follow_object".into(),
                created_at_ms: 0,
            }),
        }))
        .await
        .expect("internal, the app's object");
    let subs = e
        .notify
        .list_subscriptions(internal(nt::ListSubscriptionsRequest {
            user_id: 2,
            ..Default::default()
        }))
        .await
        .expect("subscriptions")
        .into_inner()
        .subscriptions;
    assert!(
        !subs.iter().any(|s| s.object_id == hidden.to_string()),
        "the refused subscription was not stored: {subs:?}"
    );
}

/// Issue 19, item 5: one connection holds at most
/// `server.max_concurrent_streams` calls at once (left unset, tonic lifted
/// hyper's limit: a client could open unboundedly many Watch streams on one
/// connection), and one user at most `notify.watch_max_per_user` streams.
#[tokio::test]
async fn a_connection_holds_at_most_its_stream_limit_and_a_user_at_most_their_watch_streams() {
    let e = env_with(|cfg| {
        cfg.server.max_concurrent_streams = 2;
        cfg.notify.watch_max_per_user = 1;
    })
    .await;
    let watch = |mut client: NotifyServiceClient<Channel>, user: u64| async move {
        client
            .watch(internal(nt::WatchRequest {
                user_id: user,
                resume_after: String::new(),
            }))
            .await
    };
    let first = watch(e.notify.clone(), 1).await.expect("watch 1").into_inner();
    let _second = watch(e.notify.clone(), 2).await.expect("watch 2").into_inner();
    // A third call on the same connection waits until a stream ends.
    let mut c = e.notify.clone();
    let third = tokio::spawn(async move {
        c.get_unread_counts(internal(nt::GetUnreadCountsRequest { user_id: 3 }))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third stream opened past the connection's limit"
    );

    // Another connection: user 1 already watches, a second stream is refused.
    let other = NotifyServiceClient::new(
        Channel::from_shared(format!("http://{}", e.platform.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let refused = watch(other.clone(), 1).await.expect_err("user 1's second stream");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("per user"), "{refused:?}");

    drop(first);
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a stream ended")
        .expect("join")
        .expect("unread counts");
}
