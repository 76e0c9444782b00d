//! # jetweave — a NATS-native work fabric
//!
//! Nodes start against a NATS cluster; everything between them flows over
//! NATS subjects and JetStream. The wire contract is `subjects.md`.
//!
//! ## The parts
//! - [`subjects`] builds every subject, stream, bucket and store name from
//!   the prefix; [`protocol`] holds every JSON payload.
//! - [`discovery`]: each node keeps a NodeInfo with a per-key TTL in the
//!   `P-nodes` KV bucket; watchers see joins, and see a purge when a
//!   crashed node's TTL runs out. [`discovery::ClusterView`] is the live
//!   copy nodes and coordinators read.
//! - [`node`]: heartbeats (`P.node.<id>.heartbeat`), the `weave-node`
//!   micro service answering control (`P.ctl.<id>.<verb>`, `P.ctl.all.*`)
//!   and event injection (`P.event.<id>.<process>`) into named processes,
//!   and graceful shutdown (drain → wait → unregister).
//! - [`queue`]: the task work queues. A task published on
//!   `P.tasks.<queue>.<priority>` lands in the `P_TASKS` work-queue stream;
//!   a node with a free slot pulls it (highest priority first), runs its
//!   [`handler`] with progress acks, and writes one terminal TaskResult to
//!   `P_RESULTS` (`P.results.<task_id>`); failures are NAKed with backoff
//!   and finally dead-lettered to `P_DLQ`.
//! - [`coordinator`]: serves the `weave-api` micro service (any number,
//!   one queue group) and, while it holds the lease in `P-leader`, splits
//!   runs into shards, publishes them on `P.shards.<node>` and moves them
//!   when nodes die, drain or join.
//! - [`checkpoint`]: handler state in the `P-checkpoints` object store.
//! - [`client`]: the library API for submitters (submit, wait, get,
//!   cancel) over the `weave-api` micro service.
//! - [`sidecar`]: the HTTP sidecar (axum) turning REST calls into NATS
//!   requests; [`up`] starts a whole local cluster; [`cli`] is the command
//!   line, operator commands included.
//! - [`shutdown`]: the one shutdown signal every task listens to.
//!
//! ## A task's path
//! ```text
//! submitter ──publish──▶ P.tasks.default.normal ──▶ P_TASKS (work queue)
//!                                                        │ fetch (free slots only)
//!                                   node dispatcher ◀────┘
//!                                        │ handler(ctx, payload), progress acks
//!                                        ▼
//!        P.results.<id> ◀── one terminal result ──┘ then ack (or NAK+backoff / DLQ)
//! ```

pub mod cli;
pub mod client;
pub mod config;
pub mod connect;
pub mod coordinator;
pub mod error;
pub mod handler;
pub mod shutdown;
pub mod sidecar;
pub mod store;
pub mod up;
pub mod wire;
pub mod worker;

pub use store::{checkpoint, discovery};
pub use wire::{protocol, subjects};

pub use client::Client;
pub use config::NodeConfig;
pub use connect::NatsOptions;
pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{Error, ErrorCode};
pub use shutdown::Shutdown;
pub use worker::{Node, NodeHandle};
