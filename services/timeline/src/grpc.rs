//! The gRPC adapter of TimelineService.

use feed_core::{ApiError, Cursor, FeedRef, validate};
// Served with activities as `SharedActivity`: encoded straight from the
// store's cache in feedd, and as publish sent them in the split shape.
use feed_proto::wire::timeline::v1 as pb;
use feed_proto::wire::timeline::v1::timeline_service_server::TimelineService;
use feed_server::Caller;
use tonic::{Request, Response, Status};

use crate::service::{Page, Timeline};

/// The tonic service over [`Timeline`].
#[derive(Clone)]
pub struct TimelineGrpc {
    timeline: Timeline,
}

impl TimelineGrpc {
    /// Wraps the domain service.
    pub fn new(timeline: Timeline) -> Self {
        Self { timeline }
    }
}

fn cursor(page: &Page) -> String {
    page.next_before
        .map(|b| Cursor { before_id: b }.encode())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TimelineService for TimelineGrpc {
    async fn get_timeline(
        &self,
        req: Request<pb::GetTimelineRequest>,
    ) -> Result<Response<pb::GetTimelineResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.get_ref();
        let user = validate::user_id("user_id", r.user_id)?;
        caller.act_as("user_id", user)?;
        let limit = validate::page_size("limit", r.limit, 20, self.timeline.max_limit() as u32)?;
        let before = Cursor::decode("cursor", &r.cursor)?.map(|c| c.before_id);
        let page = self.timeline.home(user, limit, before).await?;
        Ok(Response::new(pb::GetTimelineResponse {
            next_cursor: cursor(&page),
            has_more: page.has_more,
            rebuilt: page.rebuilt,
            degraded: page.degraded,
            items: page
                .items
                .into_iter()
                .map(|i| pb::TimelineItem {
                    activity: Some(i.activity),
                    source_feed: i.source.as_str().to_owned(),
                    delivery_mode: i.mode as i32,
                })
                .collect(),
        }))
    }

    async fn get_feed(&self, req: Request<pb::GetFeedRequest>) -> Result<Response<pb::GetFeedResponse>, Status> {
        let caller = Caller::of(&req)?;
        let r = req.get_ref();
        // Who asks first: a caller acting for another user learns nothing
        // from how the rest of the request is judged.
        let viewer = match r.viewer_id {
            0 => None,
            v => {
                let v = validate::user_id("viewer_id", v)?;
                caller.act_as("viewer_id", v)?;
                Some(v)
            }
        };
        let feed = FeedRef::parse_field("feed", &r.feed)?;
        if viewer.is_none() && caller.user_id.is_some() {
            return Err(ApiError::invalid("viewer_id", "a bff call names its user as the viewer").into());
        }
        let limit = validate::page_size("limit", r.limit, 20, self.timeline.max_limit() as u32)?;
        let before = Cursor::decode("cursor", &r.cursor)?.map(|c| c.before_id);
        let page = self.timeline.feed(&feed, viewer, limit, before).await?;
        Ok(Response::new(pb::GetFeedResponse {
            next_cursor: cursor(&page),
            has_more: page.has_more,
            activities: page.items.into_iter().map(|i| i.activity).collect(),
        }))
    }
}
