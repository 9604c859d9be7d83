//! The gRPC adapter: authenticate, decode and validate, call the domain, encode.

use std::pin::Pin;

use feed_core::{ApiError, FeedRef, PageToken, UserId, validate};
use feed_proto::followgraph::v1 as pb;
use feed_proto::followgraph::v1::follow_graph_service_server::FollowGraphService;
use feed_server::{Caller, auth::Role};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::service::FollowGraph;
use crate::store::EdgeState;

const FOLLOWERS_TOKEN: u8 = 0x01;
const FOLLOWING_TOKEN: u8 = 0x02;
const MEMBERS_TOKEN: u8 = 0x03;
const MAX_BATCH: usize = 100;
const MAX_VERSION_BATCH: usize = 1000;

/// The tonic service over [`FollowGraph`].
#[derive(Clone)]
pub struct FollowGraphGrpc {
    graph: FollowGraph,
}

impl FollowGraphGrpc {
    /// Wraps the domain service.
    pub fn new(graph: FollowGraph) -> Self {
        Self { graph }
    }
}

fn edge_pb(e: EdgeState) -> pb::EdgeState {
    pb::EdgeState {
        follower_id: e.follower,
        feed: e.feed.to_string(),
        edge_version: e.version,
        following: e.following,
        muted: e.muted,
    }
}

fn follower_pb(f: crate::store::Follower) -> pb::Follower {
    pb::Follower {
        user_id: f.user,
        muted: f.muted,
    }
}

/// Authenticates, then checks the caller may act as `user` (request field `field`).
fn acting<T>(req: &Request<T>, field: &str, user: u64) -> Result<UserId, ApiError> {
    let user = validate::user_id(field, user)?;
    Caller::of(req)?.act_as(field, user)?;
    Ok(user)
}

fn internal<T>(req: &Request<T>) -> Result<(), ApiError> {
    Caller::of(req)?.require_internal()
}

fn feeds(field: &str, raw: &[String], max: usize) -> Result<Vec<FeedRef>, ApiError> {
    validate::batch_len(field, raw, max)?;
    raw.iter()
        .enumerate()
        .map(|(i, f)| FeedRef::parse_nth(field, i, f))
        .collect()
}

fn user_ids(field: &str, raw: &[u64], max: usize) -> Result<Vec<UserId>, ApiError> {
    validate::batch_len(field, raw, max)?;
    raw.iter()
        .enumerate()
        .map(|(i, u)| validate::user_id(&format!("{field}[{i}]"), *u))
        .collect()
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::FollowerBatch, Status>> + Send>>;

#[tonic::async_trait]
impl FollowGraphService for FollowGraphGrpc {
    async fn follow(&self, req: Request<pb::FollowRequest>) -> Result<Response<pb::FollowResponse>, Status> {
        let follower = acting(&req, "follower_id", req.get_ref().follower_id)?;
        let feed = FeedRef::parse_field("feed", &req.get_ref().feed)?;
        let c = self.graph.follow(follower, &feed).await?;
        Ok(Response::new(pb::FollowResponse {
            changed: c.changed,
            edge: Some(edge_pb(c.edge)),
        }))
    }

    async fn unfollow(&self, req: Request<pb::UnfollowRequest>) -> Result<Response<pb::UnfollowResponse>, Status> {
        let follower = acting(&req, "follower_id", req.get_ref().follower_id)?;
        let feed = FeedRef::parse_field("feed", &req.get_ref().feed)?;
        let c = self.graph.unfollow(follower, &feed).await?;
        Ok(Response::new(pb::UnfollowResponse {
            changed: c.changed,
            edge: Some(edge_pb(c.edge)),
        }))
    }

    async fn block(&self, req: Request<pb::BlockRequest>) -> Result<Response<pb::BlockResponse>, Status> {
        let user = acting(&req, "user_id", req.get_ref().user_id)?;
        let target = validate::user_id("target_user_id", req.get_ref().target_user_id)?;
        let c = self.graph.block(user, target).await?;
        Ok(Response::new(pb::BlockResponse {
            changed: c.changed,
            removed: c.removed.into_iter().map(edge_pb).collect(),
        }))
    }

    async fn unblock(&self, req: Request<pb::UnblockRequest>) -> Result<Response<pb::UnblockResponse>, Status> {
        let user = acting(&req, "user_id", req.get_ref().user_id)?;
        let target = validate::user_id("target_user_id", req.get_ref().target_user_id)?;
        let changed = self.graph.unblock(user, target).await?;
        Ok(Response::new(pb::UnblockResponse { changed }))
    }

    async fn mute(&self, req: Request<pb::MuteRequest>) -> Result<Response<pb::MuteResponse>, Status> {
        let user = acting(&req, "user_id", req.get_ref().user_id)?;
        let target = validate::user_id("target_user_id", req.get_ref().target_user_id)?;
        let c = self.graph.set_mute(user, target, true).await?;
        Ok(Response::new(pb::MuteResponse {
            changed: c.changed,
            edge: Some(edge_pb(c.edge)),
        }))
    }

    async fn unmute(&self, req: Request<pb::UnmuteRequest>) -> Result<Response<pb::UnmuteResponse>, Status> {
        let user = acting(&req, "user_id", req.get_ref().user_id)?;
        let target = validate::user_id("target_user_id", req.get_ref().target_user_id)?;
        let c = self.graph.set_mute(user, target, false).await?;
        Ok(Response::new(pb::UnmuteResponse {
            changed: c.changed,
            edge: Some(edge_pb(c.edge)),
        }))
    }

    async fn get_relationships(
        &self,
        req: Request<pb::GetRelationshipsRequest>,
    ) -> Result<Response<pb::GetRelationshipsResponse>, Status> {
        let user = acting(&req, "user_id", req.get_ref().user_id)?;
        // Whether someone blocks or mutes you is theirs to know: an end
        // user's call reads both as false; services (the timeline's rules)
        // see them.
        let told_of_others = Caller::of(&req)?.role == Role::Internal;
        let targets = user_ids("target_user_ids", &req.get_ref().target_user_ids, MAX_BATCH)?;
        let feed_refs = feeds("feeds", &req.get_ref().feeds, MAX_BATCH)?;
        let (rels, following) = self.graph.relationships(user, &targets, &feed_refs).await?;
        let member = if feed_refs.is_empty() {
            vec![]
        } else {
            self.graph.members(user, &feed_refs).await?
        };
        Ok(Response::new(pb::GetRelationshipsResponse {
            relationships: rels
                .into_iter()
                .map(|r| pb::Relationship {
                    target_user_id: r.target,
                    following: r.following,
                    followed_by: r.followed_by,
                    blocking: r.blocking,
                    blocked_by: r.blocked_by && told_of_others,
                    muting: r.muting,
                    muted_by: r.muted_by && told_of_others,
                })
                .collect(),
            feeds: feed_refs
                .into_iter()
                .zip(following)
                .zip(member)
                .map(|((f, following), member)| pb::FeedRelationship {
                    feed: f.to_string(),
                    following,
                    member,
                })
                .collect(),
        }))
    }

    async fn set_membership(
        &self,
        req: Request<pb::SetMembershipRequest>,
    ) -> Result<Response<pb::SetMembershipResponse>, Status> {
        internal(&req)?;
        let r = req.get_ref();
        let feed = FeedRef::parse_field("feed", &r.feed)?;
        let user = validate::user_id("user_id", r.user_id)?;
        let changed = self.graph.set_member(&feed, user, r.member).await?;
        Ok(Response::new(pb::SetMembershipResponse { changed }))
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        internal(&req)?;
        let r = req.get_ref();
        let feed = FeedRef::parse_field("feed", &r.feed)?;
        let limit = validate::page_size("page_size", r.page_size, 100, 1000)?;
        let after = PageToken::decode_u64("page_token", MEMBERS_TOKEN, &r.page_token)?.unwrap_or(0);
        let (page, more) = self.graph.list_members(&feed, after, limit).await?;
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => PageToken::encode_u64(MEMBERS_TOKEN, *last),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListMembersResponse {
            user_ids: page,
            next_page_token,
        }))
    }

    async fn list_followers(
        &self,
        req: Request<pb::ListFollowersRequest>,
    ) -> Result<Response<pb::ListFollowersResponse>, Status> {
        Caller::of(&req)?;
        let r = req.get_ref();
        let feed = FeedRef::parse_field("feed", &r.feed)?;
        let limit = validate::page_size("page_size", r.page_size, 100, 1000)?;
        let after = PageToken::decode_u64("page_token", FOLLOWERS_TOKEN, &r.page_token)?.unwrap_or(0);
        let (page, more) = self.graph.list_followers(&feed, after, limit).await?;
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => PageToken::encode_u64(FOLLOWERS_TOKEN, last.user),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFollowersResponse {
            follower_ids: page.into_iter().map(|f| f.user).collect(),
            next_page_token,
        }))
    }

    async fn list_following(
        &self,
        req: Request<pb::ListFollowingRequest>,
    ) -> Result<Response<pb::ListFollowingResponse>, Status> {
        Caller::of(&req)?;
        let r = req.get_ref();
        let user = validate::user_id("user_id", r.user_id)?;
        let limit = validate::page_size("page_size", r.page_size, 100, 1000)?;
        let after = match PageToken::decode("page_token", FOLLOWING_TOKEN, &r.page_token)? {
            None => None,
            Some(bytes) => {
                let s = std::str::from_utf8(&bytes).map_err(|_| ApiError::invalid("page_token", "malformed token"))?;
                Some(FeedRef::parse_field("page_token", s)?)
            }
        };
        let (page, more) = self.graph.list_following(user, after.as_ref(), limit).await?;
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => PageToken::encode(FOLLOWING_TOKEN, last.to_string().as_bytes()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListFollowingResponse {
            feeds: page.into_iter().map(|f| f.to_string()).collect(),
            next_page_token,
        }))
    }

    async fn get_counts(&self, req: Request<pb::GetCountsRequest>) -> Result<Response<pb::GetCountsResponse>, Status> {
        Caller::of(&req)?;
        let feed_refs = feeds("feeds", &req.get_ref().feeds, MAX_BATCH)?;
        let users = user_ids("user_ids", &req.get_ref().user_ids, MAX_BATCH)?;
        let (feed_counts, user_counts) = self.graph.counts(&feed_refs, &users).await?;
        Ok(Response::new(pb::GetCountsResponse {
            feeds: feed_refs
                .into_iter()
                .zip(feed_counts)
                .map(|(f, c)| pb::FeedCounts {
                    feed: f.to_string(),
                    followers: c.followers,
                    celebrity: c.celebrity,
                })
                .collect(),
            users: user_counts
                .into_iter()
                .map(|u| pb::UserCounts {
                    user_id: u.user,
                    following: u.following,
                    followers: u.followers,
                })
                .collect(),
        }))
    }

    type StreamFollowersStream = BatchStream;

    async fn stream_followers(
        &self,
        req: Request<pb::StreamFollowersRequest>,
    ) -> Result<Response<Self::StreamFollowersStream>, Status> {
        internal(&req)?;
        let r = req.into_inner();
        let feed = FeedRef::parse_field("feed", &r.feed)?;
        let batch = validate::page_size("batch_size", r.batch_size, 1000, 10_000)?;
        let graph = self.graph.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut after = r.after_user_id;
            loop {
                let page = match graph.list_followers(&feed, after, batch).await {
                    Ok((page, _)) => page,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let Some(last) = page.last().map(|f| f.user) else {
                    return;
                };
                after = last;
                let msg = pb::FollowerBatch {
                    followers: page.into_iter().map(follower_pb).collect(),
                    last_user_id: last,
                };
                // A closed channel means the client went away: stop paging.
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_follower_shards(
        &self,
        req: Request<pb::ListFollowerShardsRequest>,
    ) -> Result<Response<pb::ListFollowerShardsResponse>, Status> {
        internal(&req)?;
        let feed = FeedRef::parse_field("feed", &req.get_ref().feed)?;
        let (shards, total) = self.graph.follower_shards(&feed).await?;
        Ok(Response::new(pb::ListFollowerShardsResponse {
            shards: shards.into_iter().map(|shard| pb::FollowerShard { shard }).collect(),
            total_followers: total,
        }))
    }

    async fn page_followers(
        &self,
        req: Request<pb::PageFollowersRequest>,
    ) -> Result<Response<pb::PageFollowersResponse>, Status> {
        internal(&req)?;
        let r = req.get_ref();
        let feed = FeedRef::parse_field("feed", &r.feed)?;
        // Past the last shard a user id can fall in, the shard's id range
        // does not fit 64 bits.
        let last = crate::store::shard_of(validate::MAX_USER_ID);
        if r.shard > last {
            return Err(ApiError::invalid("shard", format!("at most {last}")).into());
        }
        let limit = validate::page_size("limit", r.limit, 1000, 10_000)?;
        let (page, done) = self.graph.page_shard(&feed, r.shard, r.after_user_id, limit).await?;
        Ok(Response::new(pb::PageFollowersResponse {
            followers: page.into_iter().map(follower_pb).collect(),
            done,
        }))
    }

    async fn get_edge_versions(
        &self,
        req: Request<pb::GetEdgeVersionsRequest>,
    ) -> Result<Response<pb::GetEdgeVersionsResponse>, Status> {
        internal(&req)?;
        let raw = &req.get_ref().edges;
        validate::batch_len("edges", raw, MAX_VERSION_BATCH)?;
        let edges = raw
            .iter()
            .enumerate()
            .map(|(i, e)| {
                Ok((
                    validate::user_id(&format!("edges[{i}].follower_id"), e.follower_id)?,
                    FeedRef::parse_field(&format!("edges[{i}].feed"), &e.feed)?,
                ))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let states = self.graph.edge_states(&edges).await?;
        Ok(Response::new(pb::GetEdgeVersionsResponse {
            edges: states.into_iter().map(edge_pb).collect(),
        }))
    }

    async fn list_edge_changes(
        &self,
        req: Request<pb::ListEdgeChangesRequest>,
    ) -> Result<Response<pb::ListEdgeChangesResponse>, Status> {
        internal(&req)?;
        let limit = validate::page_size("limit", req.get_ref().limit, 1000, 10_000)?;
        let r = req.get_ref();
        let changes = self.graph.edge_changes(r.after_seq, limit, &r.reader).await?;
        Ok(Response::new(pb::ListEdgeChangesResponse { changes }))
    }

    async fn get_graph_versions(
        &self,
        req: Request<pb::GetGraphVersionsRequest>,
    ) -> Result<Response<pb::GetGraphVersionsResponse>, Status> {
        internal(&req)?;
        let users = user_ids("user_ids", &req.get_ref().user_ids, MAX_VERSION_BATCH)?;
        let versions = self.graph.graph_versions(&users).await?;
        Ok(Response::new(pb::GetGraphVersionsResponse {
            versions: users
                .into_iter()
                .zip(versions)
                .map(|(user_id, (version, token))| pb::GraphVersion {
                    user_id,
                    version,
                    token,
                })
                .collect(),
        }))
    }
}
