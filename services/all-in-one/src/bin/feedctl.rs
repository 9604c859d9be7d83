//! `feedctl`: a small command-line client for the feed platform, for people
//! without grpcurl. Every call is plain gRPC with the bearer token.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use feed_proto::followgraph::v1 as fg;
use feed_proto::followgraph::v1::follow_graph_service_client::FollowGraphServiceClient;
use feed_proto::notify::v1 as nt;
use feed_proto::notify::v1::notify_service_client::NotifyServiceClient;
use feed_proto::publish::v1 as pb;
use feed_proto::publish::v1::publish_service_client::PublishServiceClient;
use feed_proto::timeline::v1 as tl;
use feed_proto::timeline::v1::timeline_service_client::TimelineServiceClient;
use tonic::metadata::MetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Calls a running feed platform (feedd or the service binaries).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "FEED_ADDR")]
    addr: String,
    /// Service token; defaults to the dev token feedd saved in --data-dir.
    #[arg(long, env = "FEED_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where feedd keeps its dev token.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Act as this end user (sent as x-feed-user-id; required with a bff token).
    #[arg(long)]
    as_user: Option<u64>,
    /// PEM CA the server's certificate must chain to (an https:// --addr).
    #[arg(long, env = "FEED_TLS_CA")]
    ca: Option<String>,
    /// PEM client certificate, for a server that asks for one (mutual TLS).
    #[arg(long, env = "FEED_TLS_CERT", requires = "key")]
    cert: Option<String>,
    /// Its PEM private key.
    #[arg(long, env = "FEED_TLS_KEY", requires = "cert")]
    key: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Health of a service ("" = the whole server).
    Health {
        #[arg(default_value = "")]
        service: String,
    },
    /// FOLLOWER follows FEED (user:2, tag:rust...).
    Follow { follower: u64, feed: String },
    /// FOLLOWER stops following FEED.
    Unfollow { follower: u64, feed: String },
    /// USER blocks TARGET.
    Block { user: u64, target: u64 },
    /// USER unblocks TARGET.
    Unblock { user: u64, target: u64 },
    /// USER mutes TARGET (keeps the follow, hides the items).
    Mute { user: u64, target: u64 },
    /// USER unmutes TARGET.
    Unmute { user: u64, target: u64 },
    /// Followers of FEED, one page.
    Followers {
        feed: String,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Feeds USER follows, one page.
    Following {
        user: u64,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Follower counts of feeds and users.
    Counts {
        #[arg(long = "feed")]
        feeds: Vec<String>,
        #[arg(long = "user")]
        users: Vec<u64>,
    },
    /// How USER relates to TARGETS.
    Relationships { user: u64, targets: Vec<u64> },
    /// ACTOR posts OBJECT (foreign id defaults to the object), optionally to more feeds.
    Post {
        actor: u64,
        object: String,
        #[arg(long, default_value = "post")]
        verb: String,
        #[arg(long)]
        foreign_id: Option<String>,
        #[arg(long = "to")]
        to: Vec<String>,
    },
    /// USER's home timeline, one page.
    Timeline {
        user: u64,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, default_value = "")]
        cursor: String,
    },
    /// One feed's page (user:2, tag:rust), as VIEWER sees it (0 = anonymous).
    Feed {
        feed: String,
        #[arg(long, default_value_t = 0)]
        viewer: u64,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// USER's notifications, one page, and the unread counts.
    Notifications {
        user: u64,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// SENDER sends RECIPIENT a private message.
    Message {
        sender: u64,
        recipient: u64,
        content: String,
    },
    /// A broadcast to every user.
    Announce {
        title: String,
        #[arg(long, default_value = "")]
        content: String,
    },
    /// Streams USER's live notifications until interrupted.
    Watch {
        user: u64,
        #[arg(long, default_value = "")]
        resume_after: String,
    },
}

struct Ctx {
    token: String,
    as_user: Option<u64>,
}

impl Ctx {
    fn req<T>(&self, msg: T) -> anyhow::Result<tonic::Request<T>> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {}", self.token))?,
        );
        if let Some(u) = self.as_user {
            req.metadata_mut()
                .insert("x-feed-user-id", MetadataValue::try_from(u.to_string())?);
        }
        Ok(req)
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        match e.downcast_ref::<tonic::Status>() {
            Some(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
            None => eprintln!("error: {e:#}"),
        }
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.addr.starts_with("https://") || args.ca.is_some(),
        "an https:// --addr needs --ca (the CA its certificate chains to)"
    );
    // The services' own dialing.
    let dial = feed_server::client::Dial::from_config(&feed_server::config::ClientsConfig {
        tls_ca: args.ca.clone().unwrap_or_default(),
        tls_cert: args.cert.clone().unwrap_or_default(),
        tls_key: args.key.clone().unwrap_or_default(),
        ..Default::default()
    })?;
    let channel = dial.channel(&args.addr)?;
    if let Cmd::Health { service } = &args.cmd {
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await?
            .into_inner()
            .status();
        println!("{status:?}");
        return Ok(());
    }
    let token = match args.token {
        Some(t) => t,
        None => std::fs::read_to_string(args.data_dir.join(feed_all_in_one::DEV_TOKEN_FILE))
            .map_err(|e| {
                anyhow::anyhow!(
                    "no --token / FEED_TOKEN and no dev token in {}: {e}",
                    args.data_dir.display()
                )
            })?
            .trim()
            .to_owned(),
    };
    let ctx = Ctx {
        token,
        as_user: args.as_user,
    };
    let mut publish = PublishServiceClient::new(channel.clone());
    let mut timeline = TimelineServiceClient::new(channel.clone());
    let mut notify = NotifyServiceClient::new(channel.clone());
    let mut c = FollowGraphServiceClient::new(channel);
    match args.cmd {
        Cmd::Health { .. } => {}
        Cmd::Follow { follower, feed } => {
            let r = c
                .follow(ctx.req(fg::FollowRequest {
                    follower_id: follower,
                    feed,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Unfollow { follower, feed } => {
            let r = c
                .unfollow(ctx.req(fg::UnfollowRequest {
                    follower_id: follower,
                    feed,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Block { user, target } => {
            let r = c
                .block(ctx.req(fg::BlockRequest {
                    user_id: user,
                    target_user_id: target,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Unblock { user, target } => {
            let r = c
                .unblock(ctx.req(fg::UnblockRequest {
                    user_id: user,
                    target_user_id: target,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Mute { user, target } => {
            let r = c
                .mute(ctx.req(fg::MuteRequest {
                    user_id: user,
                    target_user_id: target,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Unmute { user, target } => {
            let r = c
                .unmute(ctx.req(fg::UnmuteRequest {
                    user_id: user,
                    target_user_id: target,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Followers {
            feed,
            page_size,
            page_token,
        } => {
            let r = c
                .list_followers(ctx.req(fg::ListFollowersRequest {
                    feed,
                    page_size,
                    page_token,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Following {
            user,
            page_size,
            page_token,
        } => {
            let r = c
                .list_following(ctx.req(fg::ListFollowingRequest {
                    user_id: user,
                    page_size,
                    page_token,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Counts { feeds, users } => {
            let r = c
                .get_counts(ctx.req(fg::GetCountsRequest { feeds, user_ids: users })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Relationships { user, targets } => {
            let r = c
                .get_relationships(ctx.req(fg::GetRelationshipsRequest {
                    user_id: user,
                    target_user_ids: targets,
                    feeds: vec![],
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Post {
            actor,
            object,
            verb,
            foreign_id,
            to,
        } => {
            let r = publish
                .publish(ctx.req(pb::PublishRequest {
                    activity: Some(pb::NewActivity {
                        actor,
                        verb,
                        foreign_id: foreign_id.unwrap_or_else(|| object.clone()),
                        object,
                        to,
                        ..pb::NewActivity::default()
                    }),
                    publish_at_ms: 0,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Timeline { user, limit, cursor } => {
            let r = timeline
                .get_timeline(ctx.req(tl::GetTimelineRequest {
                    user_id: user,
                    limit,
                    cursor,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Feed { feed, viewer, limit } => {
            let r = timeline
                .get_feed(ctx.req(tl::GetFeedRequest {
                    feed,
                    viewer_id: viewer,
                    limit,
                    cursor: String::new(),
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Notifications { user, limit } => {
            let list = notify
                .list_notifications(ctx.req(nt::ListNotificationsRequest {
                    user_id: user,
                    limit,
                    ..Default::default()
                })?)
                .await?;
            println!("{:#?}", list.into_inner());
            let counts = notify
                .get_unread_counts(ctx.req(nt::GetUnreadCountsRequest { user_id: user })?)
                .await?;
            println!("{:#?}", counts.into_inner());
        }
        Cmd::Message {
            sender,
            recipient,
            content,
        } => {
            let r = notify
                .send_message(ctx.req(nt::SendMessageRequest {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    sender,
                    recipient,
                    content,
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Announce { title, content } => {
            let r = notify
                .create_announce(ctx.req(nt::CreateAnnounceRequest {
                    event_id: uuid::Uuid::now_v7().to_string(),
                    title,
                    content,
                    ..Default::default()
                })?)
                .await?;
            println!("{:#?}", r.into_inner());
        }
        Cmd::Watch { user, resume_after } => {
            let mut stream = notify
                .watch(ctx.req(nt::WatchRequest {
                    user_id: user,
                    resume_after,
                })?)
                .await?
                .into_inner();
            while let Some(ev) = stream.message().await? {
                println!("{ev:?}");
            }
        }
    }
    Ok(())
}
