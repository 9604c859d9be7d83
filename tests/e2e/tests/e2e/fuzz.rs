//! Generated requests across every RPC the platform serves (built from its
//! descriptor set, so a new RPC is fuzzed too): random and extreme field
//! values, every repeated field at and past the caps the services use,
//! NUL, control characters, unicode and braces in strings, tampered
//! cursors, ids and times at their limits. No answer may be a panic (the
//! stream reset: UNKNOWN) or INTERNAL, the server stays healthy, and a
//! request refused with INVALID_ARGUMENT changes nothing the platform
//! stores.

use std::collections::BTreeMap;

use prost_types::DescriptorProto;
use prost_types::field_descriptor_proto::{Label, Type};
use tonic::Code;

use feed_e2e::raw::{Descriptors, Headers, Rpc, call, key, varint};
use feed_e2e::{BFF_TOKEN, INTERNAL_TOKEN, TestApp, internal};
use feed_proto::followgraph::v1 as fg;
use feed_proto::notify::v1 as nt;
use feed_proto::publish::v1 as pb;
use feed_proto::timeline::v1 as tl;

/// Requests sent.
const REQUESTS: usize = 10_000;
/// Fuzzed user ids are mostly these, so requests reach stored state.
const USERS: u64 = 12;
/// Fixed: a failure names the request number, and a rerun repeats it.
/// `FEED_FUZZ_SEED=<n>` explores another sequence.
const SEED: u64 = 0x5eed_f00d_1234_5678;

fn seed() -> u64 {
    std::env::var("FEED_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s != 0)
        .unwrap_or(SEED)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

fn user_value(rng: &mut Rng) -> u64 {
    if rng.chance(75) {
        return 1 + rng.below(USERS);
    }
    *rng.pick(&[0, u64::MAX, i64::MAX as u64, 1 << 63, 13, 999_999, (-1i64) as u64])
}

fn number_value(rng: &mut Rng) -> u64 {
    if rng.chance(20) {
        return rng.next();
    }
    *rng.pick(&[
        0,
        1,
        2,
        20,
        100,
        101,
        500,
        501,
        1000,
        1001,
        10_000,
        10_001,
        u64::from(u32::MAX),
        u64::MAX,
        i64::MAX as u64,
        (-1i64) as u64,
        i64::MIN as u64,
    ])
}

fn time_value(rng: &mut Rng, now: i64) -> u64 {
    // Never "soon": a scheduled item released during the test would change
    // what the no-partial-write check compares.
    *rng.pick(&[
        0,
        -1,
        i64::MIN,
        i64::MAX,
        now - 86_400_000,
        now + 365 * 86_400_000,
        now * 1000,
    ]) as u64
}

fn feed_value(rng: &mut Rng) -> String {
    let n = 1 + rng.below(USERS);
    rng.pick(&[
        format!("user:{n}"),
        format!("user:{n}"),
        "tag:rust".into(),
        "group:7".into(),
        "company:sap".into(),
        String::new(),
        "user:".into(),
        ":".into(),
        "user:0".into(),
        "user:-1".into(),
        "user:18446744073709551615".into(),
        "planet:mars".into(),
        format!("tag:{}", "x".repeat(300)),
        "tag:a\0b".into(),
        "tag:ü🙂".into(),
        "tag:{}".into(),
    ])
    .clone()
}

fn token_value(rng: &mut Rng) -> String {
    let random: String = (0..rng.below(40))
        .map(|_| *rng.pick(&['A', 'z', '0', '-', '_', '=', '/', '+', '.']))
        .collect();
    rng.pick(&[
        String::new(),
        "garbage".into(),
        random,
        "AAAA".into(),
        "0-0".into(),
        "1-1".into(),
        "18446744073709551615-0".into(),
        "\0".into(),
        "{}".into(),
    ])
    .clone()
}

fn text_value(rng: &mut Rng) -> String {
    let long = |n: usize| "x".repeat(n);
    rng.pick(&[
        String::new(),
        "a".into(),
        long(64),
        long(65),
        long(200),
        long(201),
        long(256),
        long(257),
        long(512),
        long(513),
        long(4000),
        long(4001),
        "\0".into(),
        "\u{1}\u{7f}\u{1b}[0m".into(),
        "{}".into(),
        "{{}}%s%n".into(),
        "ü🙂漢字".into(),
        "  ".into(),
        "\n".into(),
        "like".into(),
        "post".into(),
        "comment".into(),
        "activity".into(),
        "create_post".into(),
        "follow_object".into(),
        "mention".into(),
        "photo:9".into(),
        "activity:1".into(),
        "accept".into(),
        "drop".into(),
    ])
    .clone()
}

/// A string for field `name`, by what such a field usually holds.
fn string_for(name: &str, rng: &mut Rng) -> String {
    if name.contains("feed") || name == "to" || name == "target" {
        feed_value(rng)
    } else if name.contains("cursor") || name.contains("token") || name == "resume_after" {
        token_value(rng)
    } else {
        text_value(rng)
    }
}

fn is_user_field(name: &str) -> bool {
    name.contains("user")
        || name.contains("actor")
        || [
            "sender",
            "recipient",
            "recipients",
            "mentions",
            "follower_id",
            "viewer_id",
        ]
        .contains(&name)
}

/// Builds random messages of the platform's types.
struct Gen<'a> {
    messages: &'a BTreeMap<String, DescriptorProto>,
    rng: Rng,
    now: i64,
}

impl Gen<'_> {
    fn message(&mut self, ty: &str, depth: usize) -> Vec<u8> {
        let m = self
            .messages
            .get(ty)
            .unwrap_or_else(|| panic!("no message {ty}"))
            .clone();
        let mut out = Vec::new();
        // One member per oneof at most (proto3 `optional` fields are
        // oneofs of one, so they are simply present or not).
        let mut oneof_taken = std::collections::BTreeSet::new();
        for f in &m.field {
            if !self.rng.chance(70) {
                continue;
            }
            if let Some(o) = f.oneof_index
                && !f.proto3_optional()
                && !oneof_taken.insert(o)
            {
                continue;
            }
            let repeated = f.label() == Label::Repeated;
            let count = if !repeated {
                1
            } else if f.r#type() == Type::Message {
                *self.rng.pick(&[0, 1, 2, 3, 100, 101])
            } else {
                *self.rng.pick(&[0, 1, 2, 3, 100, 101, 500, 501, 1000, 1001, 10_001])
            };
            for _ in 0..count {
                self.field(f, depth, &mut out);
            }
        }
        out
    }

    fn field(&mut self, f: &prost_types::FieldDescriptorProto, depth: usize, out: &mut Vec<u8>) {
        let name = f.name();
        let n = f.number();
        match f.r#type() {
            Type::Uint64 | Type::Int64 | Type::Uint32 | Type::Int32 => {
                let v = if is_user_field(name) {
                    user_value(&mut self.rng)
                } else if name.ends_with("_ms") {
                    time_value(&mut self.rng, self.now)
                } else {
                    number_value(&mut self.rng)
                };
                key(n, 0, out);
                varint(v, out);
            }
            Type::Bool => {
                key(n, 0, out);
                varint(self.rng.below(2), out);
            }
            Type::Enum => {
                key(n, 0, out);
                varint(*self.rng.pick(&[0, 1, 2, 3, 4, (-1i64) as u64, 99]), out);
            }
            Type::Sint32 | Type::Sint64 => {
                let v = number_value(&mut self.rng) as i64;
                key(n, 0, out);
                varint(((v << 1) ^ (v >> 63)) as u64, out);
            }
            Type::Fixed64 | Type::Sfixed64 | Type::Double => {
                key(n, 1, out);
                out.extend(number_value(&mut self.rng).to_le_bytes());
            }
            Type::Fixed32 | Type::Sfixed32 | Type::Float => {
                key(n, 5, out);
                out.extend((number_value(&mut self.rng) as u32).to_le_bytes());
            }
            Type::String => {
                let s = string_for(name, &mut self.rng);
                key(n, 2, out);
                varint(s.len() as u64, out);
                out.extend(s.as_bytes());
            }
            Type::Bytes => {
                let len = *self.rng.pick(&[0usize, 1, 100, 8192, 8193, 70_000]);
                key(n, 2, out);
                varint(len as u64, out);
                out.extend((0..len).map(|i| (i % 251) as u8));
            }
            Type::Message => {
                let inner = if depth < 3 {
                    self.message(f.type_name(), depth + 1)
                } else {
                    Vec::new()
                };
                key(n, 2, out);
                varint(inner.len() as u64, out);
                out.extend(inner);
            }
            Type::Group => {}
        }
    }
}

fn headers(rng: &mut Rng) -> Headers {
    if rng.chance(80) {
        vec![("authorization", format!("Bearer {INTERNAL_TOKEN}"))]
    } else {
        vec![
            ("authorization", format!("Bearer {BFF_TOKEN}")),
            ("x-feed-user-id", (1 + rng.below(USERS)).to_string()),
        ]
    }
}

/// What the platform stores about the fuzzed users, as the services
/// answer it (internal token): follows, blocks, mutes and counts, each
/// user's and the shared feeds' activities, scheduled items,
/// notifications, subscriptions and configuration, pending and dead jobs.
async fn stored(app: &mut TestApp) -> Vec<String> {
    let mut out = Vec::new();
    let users: Vec<u64> = (1..=USERS).collect();
    let mut feeds: Vec<String> = users.iter().map(|u| format!("user:{u}")).collect();
    feeds.extend(["tag:rust".into(), "group:7".into(), "company:sap".into()]);
    for u in &users {
        let g = &mut app.graph;
        let following = g
            .list_following(internal(fg::ListFollowingRequest {
                user_id: *u,
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner());
        let relations = g
            .get_relationships(internal(fg::GetRelationshipsRequest {
                user_id: *u,
                target_user_ids: users.clone(),
                feeds: feeds.clone(),
            }))
            .await
            .map(|r| r.into_inner());
        let n = &mut app.notify;
        let notes = n
            .list_notifications(internal(nt::ListNotificationsRequest {
                user_id: *u,
                limit: 100,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner());
        let filtered = n
            .list_notifications(internal(nt::ListNotificationsRequest {
                user_id: *u,
                limit: 100,
                filtered: true,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner());
        let counts = n
            .get_unread_counts(internal(nt::GetUnreadCountsRequest { user_id: *u }))
            .await
            .map(|r| r.into_inner());
        let subs = n
            .list_subscriptions(internal(nt::ListSubscriptionsRequest {
                user_id: *u,
                page_size: 500,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner());
        let config = n
            .get_subscription_config(internal(nt::GetSubscriptionConfigRequest { user_id: *u }))
            .await
            // A map: in order, so two equal configurations print alike.
            .map(|r| {
                let c = r.into_inner();
                (c.actions.into_iter().collect::<BTreeMap<_, _>>(), c.policy)
            });
        let scheduled = app
            .publish
            .list_scheduled(internal(pb::ListScheduledRequest {
                actor: *u,
                page_size: 500,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner());
        out.push(format!(
            "user {u}: {following:?} {relations:?} {notes:?} {filtered:?} {counts:?} {subs:?} {config:?} {scheduled:?}"
        ));
    }
    for feed in &feeds {
        let followers = app
            .graph
            .list_followers(internal(fg::ListFollowersRequest {
                feed: feed.clone(),
                page_size: 1000,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner());
        let page = app
            .timeline
            .get_feed(internal(tl::GetFeedRequest {
                feed: feed.clone(),
                limit: 100,
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner());
        out.push(format!("feed {feed}: {followers:?} {page:?}"));
    }
    let lag = app
        .publish
        .get_fanout_lag(internal(pb::GetFanoutLagRequest {}))
        .await
        .map(|r| {
            let l = r.into_inner();
            (l.pending_jobs, l.dead_letters)
        });
    let dead = app
        .publish
        .list_dead_letters(internal(pb::ListDeadLettersRequest {
            page_size: 500,
            page_token: String::new(),
        }))
        .await
        .map(|r| r.into_inner());
    let counts = app
        .graph
        .get_counts(internal(fg::GetCountsRequest { feeds, user_ids: users }))
        .await
        .map(|r| r.into_inner());
    out.push(format!("counts: {counts:?}"));
    out.push(format!("jobs: {lag:?} {dead:?}"));
    out
}

/// Codes a fuzzed request may get. Anything else (INTERNAL, UNKNOWN: a
/// panic resets the stream; UNIMPLEMENTED; DATA_LOSS) fails the test.
fn acceptable(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::Aborted
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_generated_requests_get_no_panic_no_internal_and_refusals_write_nothing() {
    // Unlimited: a bff user's refusals sent again in a burst must meet the
    // same checks, not a quota (quotas have a test of their own).
    let mut app = TestApp::start(|cfg| {
        cfg.quotas.reads_per_sec = 0.0;
        cfg.quotas.writes_per_sec = 0.0;
    })
    .await;
    let channel = app.platform.channel.clone();
    let described = Descriptors::of_platform();
    let now = feed_core::Clock::now_ms(&feed_core::SystemClock) as i64;
    let mut generator = Gen {
        messages: &described.messages,
        rng: Rng(seed()),
        now,
    };
    let mut wrong = Vec::new();
    let mut refused: Vec<(&Rpc, Vec<u8>, Headers)> = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for n in 0..REQUESTS {
        let rpc = generator.rng.pick(&described.rpcs);
        let body = generator.message(&rpc.input, 0);
        let who = headers(&mut generator.rng);
        let got = call(&channel, rpc, body.clone(), &who).await;
        let code = got.as_ref().err().map_or(Code::Ok, |s| s.code());
        *codes.entry(format!("{code:?}")).or_default() += 1;
        if !acceptable(code) {
            let message = got.err().map(|s| s.message().to_owned()).unwrap_or_default();
            wrong.push(format!("request {n}: {} -> {code:?} {message:?}", rpc.path));
        } else if code == Code::InvalidArgument {
            refused.push((rpc, body, who));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers (codes: {codes:?}):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The refused requests again, on settled state: refused again, and
    // nothing stored changed.
    app.settled().await;
    let before = stored(&mut app).await;
    for (rpc, body, who) in &refused {
        let got = call(&channel, rpc, body.clone(), who).await;
        let code = got.as_ref().err().map_or(Code::Ok, |s| s.code());
        assert_eq!(
            code,
            Code::InvalidArgument,
            "{} answered {got:?} the second time",
            rpc.path
        );
    }
    app.settled().await;
    let after = stored(&mut app).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "a refused request changed what is stored");
    }
    eprintln!(
        "fuzz: {REQUESTS} requests, codes {codes:?}; {} refusals replayed",
        refused.len()
    );
    app.stop().await.expect("stop");
}
