//! The gRPC adapter of NotifyService.

use std::pin::Pin;

use feed_core::{ApiError, Cursor, PageToken, validate};
use feed_proto::notify::v1 as pb;
use feed_proto::notify::v1::notify_service_server::NotifyService;
use feed_server::Caller;
use prost::Message;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::live::EventId;
use crate::notifier::{ListQuery, Notifier};

const SUBSCRIPTIONS_TOKEN: u8 = 0xA5;

/// The tonic service over [`Notifier`].
#[derive(Clone)]
pub struct NotifyGrpc {
    notifier: Notifier,
}

impl NotifyGrpc {
    /// Wraps the domain service.
    pub fn new(notifier: Notifier) -> Self {
        Self { notifier }
    }
}

/// Authenticates and checks that the caller may act as `user` (field `field`).
fn user_of<T>(req: &Request<T>, field: &str, user: u64) -> Result<u64, ApiError> {
    let user = validate::user_id(field, user)?;
    Caller::of(req)?.act_as(field, user)?;
    Ok(user)
}

fn kinds(raw: &[i32]) -> Result<Vec<pb::NotificationKind>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(i, k)| match pb::NotificationKind::try_from(*k) {
            Ok(pb::NotificationKind::Unspecified) | Err(_) => {
                Err(ApiError::invalid(format!("kinds[{i}]"), format!("unknown kind {k}")))
            }
            Ok(k) => Ok(k),
        })
        .collect()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NotifyService for NotifyGrpc {
    async fn create_announce(
        &self,
        req: Request<pb::CreateAnnounceRequest>,
    ) -> Result<Response<pb::CreateAnnounceResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let r = req.into_inner();
        let (id, duplicate) = self
            .notifier
            .create_announce(&r.event_id, &r.title, &r.content, r.links, r.for_all_time)
            .await?;
        Ok(Response::new(pb::CreateAnnounceResponse {
            notification_id: id,
            duplicate,
        }))
    }

    async fn create_remind(
        &self,
        req: Request<pb::CreateRemindRequest>,
    ) -> Result<Response<pb::CreateRemindResponse>, Status> {
        // The platform makes reminds from what happened (likes, comments,
        // mentions arrive as activities); an end user could otherwise claim
        // any action by themselves on any object, to any 100 recipients.
        Caller::of(&req)?.require_internal()?;
        let out = self.notifier.create_remind_for_caller(req.into_inner()).await?;
        Ok(Response::new(pb::CreateRemindResponse {
            recipients: out.recipients,
            duplicate: out.duplicate,
            pending: out.pending,
        }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let sender = user_of(&req, "sender", req.get_ref().sender)?;
        let r = req.into_inner();
        let (id, duplicate) = self
            .notifier
            .send_message(&r.event_id, sender, r.recipient, &r.content)
            .await?;
        Ok(Response::new(pb::SendMessageResponse {
            notification_id: id,
            duplicate,
        }))
    }

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<pb::SubscribeResponse>, Status> {
        let sub = req
            .get_ref()
            .subscription
            .clone()
            .ok_or_else(|| ApiError::invalid("subscription", "required"))?;
        user_of(&req, "subscription.user_id", sub.user_id)?;
        let app = Caller::of(&req)?.require_internal().is_ok();
        let changed = self.notifier.subscribe(sub, app).await?;
        Ok(Response::new(pb::SubscribeResponse { changed }))
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        let r = req.get_ref();
        let changed = self
            .notifier
            .unsubscribe(user, &r.object_type, &r.object_id, &r.reason)
            .await?;
        Ok(Response::new(pb::UnsubscribeResponse { changed }))
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        let r = req.get_ref();
        let limit = validate::page_size("page_size", r.page_size, 100, 1000)?;
        let after = PageToken::decode("page_token", SUBSCRIPTIONS_TOKEN, &r.page_token)?
            .map(|b| pb::Subscription::decode(b.as_slice()))
            .transpose()
            .map_err(|_| ApiError::invalid("page_token", "malformed"))?;
        let subs = self.notifier.subscriptions(user, after.as_ref(), limit).await?;
        let next_page_token = if subs.len() == limit {
            subs.last()
                .map(|s| PageToken::encode(SUBSCRIPTIONS_TOKEN, &s.encode_to_vec()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subs,
            next_page_token,
        }))
    }

    async fn get_subscription_config(
        &self,
        req: Request<pb::GetSubscriptionConfigRequest>,
    ) -> Result<Response<pb::SubscriptionConfig>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        Ok(Response::new(self.notifier.config(user).await?))
    }

    async fn update_subscription_config(
        &self,
        req: Request<pb::UpdateSubscriptionConfigRequest>,
    ) -> Result<Response<pb::SubscriptionConfig>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.notifier.update_config(user, r.actions, r.policy).await?,
        ))
    }

    async fn list_notifications(
        &self,
        req: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        let r = req.get_ref();
        let query = ListQuery {
            kinds: kinds(&r.kinds)?,
            unread_only: r.unread_only,
            filtered: r.filtered,
            limit: validate::page_size("limit", r.limit, 20, 100)?,
            before: Cursor::decode("cursor", &r.cursor)?.map(|c| c.before_id),
        };
        let page = self.notifier.list(user, query).await?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: page.notes,
            next_cursor: page
                .next_before
                .map(|b| Cursor { before_id: b }.encode())
                .unwrap_or_default(),
        }))
    }

    async fn get_unread_counts(
        &self,
        req: Request<pb::GetUnreadCountsRequest>,
    ) -> Result<Response<pb::GetUnreadCountsResponse>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        Ok(Response::new(pb::GetUnreadCountsResponse {
            counts: self.notifier.counts(user).await?,
        }))
    }

    async fn mark_read(&self, req: Request<pb::MarkReadRequest>) -> Result<Response<pb::MarkReadResponse>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        let r = req.get_ref();
        let down_to = Cursor::decode("up_to_cursor", &r.up_to_cursor)?.map(|c| c.before_id);
        if down_to.is_some() && !r.all {
            return Err(ApiError::invalid("up_to_cursor", "needs all").into());
        }
        self.notifier.mark_read(user, &r.ids, r.all, down_to).await?;
        Ok(Response::new(pb::MarkReadResponse {}))
    }

    async fn mark_seen(&self, req: Request<pb::MarkSeenRequest>) -> Result<Response<pb::MarkSeenResponse>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        self.notifier.mark_seen(user).await?;
        Ok(Response::new(pb::MarkSeenResponse {}))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let user = user_of(&req, "user_id", req.get_ref().user_id)?;
        let r = req.get_ref();
        let resume = match r.resume_after.as_str() {
            "" => None,
            s => Some(EventId::parse(s).ok_or_else(|| ApiError::invalid("resume_after", "not an event id"))?),
        };
        let rx = self.notifier.watch(user, resume)?;
        let stream = tokio_stream::StreamExt::map(ReceiverStream::new(rx), |r| r.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn register_user(
        &self,
        req: Request<pb::RegisterUserRequest>,
    ) -> Result<Response<pb::RegisterUserResponse>, Status> {
        Caller::of(&req)?.require_internal()?;
        let user = validate::user_id("user_id", req.get_ref().user_id)?;
        self.notifier.register_user(user, req.get_ref().created_at_ms).await?;
        Ok(Response::new(pb::RegisterUserResponse {}))
    }
}
