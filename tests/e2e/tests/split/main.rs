//! The split deployment: the real service binaries as separate processes
//! with replicas (`feed_e2e::split`), talking gRPC, on one Redis and, when
//! the run has a CQL node, on it. One deployment per test, shared by every
//! case of that test.

mod split_faults;
mod split_property;
mod split_replicas;

use std::collections::BTreeSet;

use feed_e2e::internal;
use feed_e2e::split::{Role, Split};
use feed_proto::common::v1::{Activity, ActivityStatus};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::notify::v1::notify_service_client::NotifyServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1 as tl;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use tonic::transport::Channel;

/// A client per service, each balanced over every replica: a test's calls
/// land on any of them, as a BFF's do behind a Kubernetes Service.
#[derive(Clone)]
struct Clients {
    graph: FollowGraphServiceClient<Channel>,
    publish: PublishServiceClient<Channel>,
    timeline: TimelineServiceClient<Channel>,
    notify: NotifyServiceClient<Channel>,
}

impl Clients {
    fn any(split: &Split) -> Self {
        Self {
            graph: FollowGraphServiceClient::new(split.any(Role::FollowGraph)),
            publish: PublishServiceClient::new(split.any(Role::Publish)),
            timeline: TimelineServiceClient::new(split.any(Role::Timeline)),
            notify: NotifyServiceClient::new(split.any(Role::Notify)),
        }
    }

    /// Every id of `user`'s home timeline, paged `page` at a time.
    async fn timeline_ids(&mut self, user: u64, page: u32) -> Result<Vec<u64>, tonic::Status> {
        let mut ids = Vec::new();
        let mut cursor = String::new();
        loop {
            let r = self
                .timeline
                .get_timeline(internal(tl::GetTimelineRequest {
                    user_id: user,
                    limit: page,
                    cursor: cursor.clone(),
                }))
                .await?
                .into_inner();
            ids.extend(r.items.iter().filter_map(|i| i.activity.as_ref().map(|a| a.id)));
            if r.next_cursor.is_empty() {
                return Ok(ids);
            }
            cursor = r.next_cursor;
        }
    }

    /// The activities of `ids`, deleted ones included.
    async fn activities(&mut self, ids: &[u64]) -> Vec<Activity> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            out.extend(
                self.publish
                    .get_activities(internal(pb::GetActivitiesRequest {
                        ids: chunk.to_vec(),
                        include_deleted: true,
                        viewer_id: 0,
                    }))
                    .await
                    .expect("get activities")
                    .into_inner()
                    .activities,
            );
        }
        out
    }

    /// The pull model of `user`'s home timeline over `published`, from the
    /// durable stores through the services' own read RPCs: every visible
    /// item of every feed they follow, minus blocked and muted authors,
    /// plus their own, newest first.
    async fn pull_model(&mut self, user: u64, activities: &[Activity]) -> Vec<u64> {
        let following: BTreeSet<String> = self
            .graph
            .list_following(internal(fg::ListFollowingRequest {
                user_id: user,
                page_size: 1000,
                page_token: String::new(),
            }))
            .await
            .expect("following")
            .into_inner()
            .feeds
            .into_iter()
            .collect();
        let mut actors: Vec<u64> = activities.iter().map(|a| a.actor).filter(|a| *a != user).collect();
        actors.sort_unstable();
        actors.dedup();
        let rels = self
            .graph
            .get_relationships(internal(fg::GetRelationshipsRequest {
                user_id: user,
                target_user_ids: actors,
                feeds: vec![],
            }))
            .await
            .expect("relationships")
            .into_inner()
            .relationships;
        let hidden = |actor: u64| {
            rels.iter()
                .any(|r| r.target_user_id == actor && (r.blocking || r.blocked_by || r.muting))
        };
        let mut out = Vec::new();
        for a in activities {
            if a.status == ActivityStatus::Deleted as i32 {
                continue;
            }
            if a.actor == user {
                out.push(a.id);
                continue;
            }
            let actor_feed = format!("user:{}", a.actor);
            let reached = following.contains(&actor_feed) || a.to.iter().any(|t| following.contains(t));
            if !reached || hidden(a.actor) {
                continue;
            }
            let follows_actor = following.contains(&actor_feed);
            if feed_core::visibility::can_see(a, Some(user), || follows_actor) {
                out.push(a.id);
            }
        }
        out.sort_unstable_by(|a, b| b.cmp(a));
        out
    }

    /// Waits until publish reports no pending job (first letting an
    /// edge-log tail round pass); fails when the count stops falling.
    async fn settled(&mut self) {
        if let Err(lag) = self.try_settled().await {
            panic!("jobs still pending: {lag}");
        }
    }

    /// [`Clients::settled`], answering the last lag seen and the count's
    /// course when jobs are still pending at the deadline: 30 s without a
    /// new low, or 300 s in all. How fast a backlog drains is the benches'
    /// business (`feed-bench flood`); here it must only drain, however
    /// busy the machine is.
    /// Answers the pending jobs it first saw.
    async fn try_settled(&mut self) -> Result<u64, String> {
        use std::time::Duration;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = tokio::time::Instant::now();
        let mut low = (u64::MAX, start);
        // Pending jobs every 5 s: a failure tells a slow drain from a stall.
        let mut course = Vec::new();
        loop {
            let lag = self
                .publish
                .get_fanout_lag(internal(pb::GetFanoutLagRequest {}))
                .await
                .map(|r| r.into_inner());
            let now = tokio::time::Instant::now();
            let pending = lag.as_ref().map(|l| l.pending_jobs).unwrap_or(u64::MAX);
            if pending == 0 {
                return Ok(course.first().map_or(0, |&(_, p)| p));
            }
            if pending < low.0 {
                low = (pending, now);
            }
            let at = start.elapsed().as_secs();
            if course.last().is_none_or(|(s, _)| at >= s + 5) {
                course.push((at, pending));
            }
            if now - low.1 >= Duration::from_secs(30) || now - start >= Duration::from_secs(300) {
                return Err(format!("{lag:?}; pending jobs by second: {course:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
