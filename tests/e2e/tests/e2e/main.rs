//! The end-to-end suite, one test binary (one link): each module is one
//! area, run against real servers on 127.0.0.1:0 over real gRPC.

mod authz_matrix;
mod dead_letters;
mod end_user_tokens;
mod fanout_fault;
mod fanout_property;
mod follow_graph;
mod fuzz;
mod internal_caps;
mod internal_retries;
mod k8s_manifests;
mod notify;
mod publish;
mod quotas;
mod redis_auth;
mod redis_loss;
mod standard_protocols;
mod state_caps;
mod timeline;
mod timeline_property;
