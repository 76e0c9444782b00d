//! # jetweave — a NATS-native work fabric
//!
//! Nodes start against a NATS cluster; everything between them flows over
//! NATS subjects and JetStream. The wire contract is `subjects.md`.
//!
//! ## The parts, bottom up
//! Each layer imports only its own and those below (`tests/layers.rs`
//! checks it); [`worker`], [`coordinator`] and [`pool`] never import each other.
//! - **base**: [`error`] (typed errors with a code), [`shutdown`] (the one
//!   stop signal), [`connect`], [`telemetry`] (the OTLP trace exporter).
//! - **wire** ([`wire`]): [`wire::ids`] (what may be a subject token),
//!   [`wire::subjects`] (every subject, stream, bucket and store name,
//!   built from the prefix), [`wire::protocol`] (every JSON payload) and
//!   [`wire::trace`] (the W3C `traceparent` a task carries).
//! - **store** ([`store`]): the JetStream resources and their reads and
//!   writes: task publishing and schedules, terminal results, the audit
//!   log, [`store::limits`] (flow-control limits, running slots and token
//!   buckets), [`store::checkpoint`] (the `P-checkpoints` object store) and
//!   [`store::discovery`] (the `P-nodes` KV bucket with per-key TTLs, and
//!   [`store::discovery::ClusterView`], the live copy everyone reads);
//!   [`config`] (node configuration).
//! - **handler** ([`handler`]): built-in, exec and http task handlers.
//! - **roles**: [`worker`] — a node: heartbeats, the `weave-node` micro
//!   service (control, event injection into named processes), the
//!   dispatcher that pulls tasks on free slots, one attempt's life, and the
//!   keyed concurrency and rate limits a task passes before it starts;
//!   [`coordinator`] — the `weave-api` service and, while it holds the
//!   lease, runs split into shards that move when nodes die, drain or join;
//!   [`pool`] — worker processes kept between `min` and `max`, scaled on
//!   the backlog of their queues. The three never import each other.
//! - **top**: [`client`] (submit, wait, get, cancel) and [`sidecar`] (HTTP
//!   to NATS). The binary adds `cli` and `up`.
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

#![deny(unreachable_pub)]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod connect;
pub mod coordinator;
pub mod error;
pub mod handler;
pub mod pool;
pub mod shutdown;
pub mod sidecar;
pub mod store;
pub mod telemetry;
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
