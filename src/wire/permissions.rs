//! Least privilege (contract §13): what each role may publish and
//! subscribe to, as allow-lists built from [`Subjects`] (never by hand),
//! so a subject added there is either in a role's list or denied.
//!
//! The roles:
//! - **node `<id>`**: its own heartbeat, discovery key, control and event
//!   subjects, its own shard consumer; the task consumers, results, dead
//!   letters, attempts and checkpoints it works with. It cannot send a
//!   control verb (to a node or to all), write another node's key, create
//!   runs or submit through the API.
//! - **submitter**: publishes tasks, calls `P.api.tasks.*`, reads results.
//! - **coordinator**: the control plane: owns jetweave's streams and
//!   buckets (creates them, assigns shards, deletes a dead node's shard
//!   consumer), answers `P.api.>`; of the control verbs it sends only the
//!   read-only `status` and `task_lookup`, never `drain` or `shutdown`.
//! - **operator** and **sidecar**: everything under the prefix (the
//!   sidecar also hosts agent bridges, which are nodes).
//!
//! Every role has its own inbox prefix (`_INBOX_<key id>`), so nobody can
//! read another user's replies.
//!
//! ```
//! use jetweave::subjects::Subjects;
//! use jetweave::wire::permissions::{permissions, Role};
//! let s = Subjects::new("weave").unwrap();
//! let p = permissions(&s, &Role::Node("n1".into()), "_INBOX_UABC");
//! assert!(p.publish.contains(&"weave.node.n1.heartbeat".to_string()));
//! assert!(!p.publish.iter().any(|x| x.starts_with("weave.ctl.n2")));
//! ```

use super::protocol::Priority;
use super::subjects::{
    js_ack, js_api, js_flow_control, kv_key, kv_stream, micro_service, object_stream,
    object_subjects, Subjects, API_SERVICE, NODE_SERVICE, POOL_SERVICE,
};

/// Who connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A coordinator (and the `weave-api` service).
    Coordinator,
    /// The HTTP sidecar.
    Sidecar,
    /// A client that submits tasks and reads their results.
    Submitter,
    /// A person or tool that runs the fabric (CLI, `nats`).
    Operator,
    /// The worker node with this id.
    Node(String),
    /// The worker pool with this id (its workers are nodes).
    Pool(String),
}

impl Role {
    /// The user's name: `coordinator`, `sidecar`, `submitter`, `operator`
    /// or `node-<id>` (the seed file is `<name>.nk`).
    pub fn user(&self) -> String {
        match self {
            Role::Coordinator => "coordinator".into(),
            Role::Sidecar => "sidecar".into(),
            Role::Submitter => "submitter".into(),
            Role::Operator => "operator".into(),
            Role::Node(id) => format!("node-{id}"),
            Role::Pool(id) => format!("pool-{id}"),
        }
    }
}

/// What a role may do: subjects (with wildcards) it may publish and
/// subscribe to; `allow_responses` lets it answer requests it received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Publish allow-list.
    pub publish: Vec<String>,
    /// Subscribe allow-list.
    pub subscribe: Vec<String>,
    /// May reply to the requests it receives.
    pub allow_responses: bool,
}

/// The permissions of `role` whose inbox prefix is `inbox`.
pub fn permissions(s: &Subjects, role: &Role, inbox: &str) -> Permissions {
    let mut p = match role {
        Role::Node(id) => node(s, id),
        Role::Pool(id) => pool(s, id),
        Role::Submitter => submitter(s),
        Role::Coordinator => coordinator(s),
        Role::Operator | Role::Sidecar => admin(s),
    };
    p.subscribe.push(format!("{inbox}.>"));
    p.publish.push(js_api("INFO"));
    p.publish.sort();
    p.publish.dedup();
    p.subscribe.sort();
    p.subscribe.dedup();
    p
}

/// Create (only when missing: the server refuses a different config) and
/// look up one stream.
fn stream_create(stream: &str) -> Vec<String> {
    vec![
        js_api(&format!("STREAM.CREATE.{stream}")),
        js_api(&format!("STREAM.INFO.{stream}")),
    ]
}

/// Read one stream's messages by sequence or last-by-subject.
fn stream_read(stream: &str) -> Vec<String> {
    vec![
        js_api(&format!("STREAM.INFO.{stream}")),
        js_api(&format!("STREAM.MSG.GET.{stream}")),
        js_api(&format!("DIRECT.GET.{stream}")),
        js_api(&format!("DIRECT.GET.{stream}.>")),
    ]
}

/// Watch a stream through ordered (ephemeral) consumers: KV watches and
/// object reads.
fn stream_watch(stream: &str) -> Vec<String> {
    vec![
        js_api(&format!("CONSUMER.CREATE.{stream}")),
        js_api(&format!("CONSUMER.CREATE.{stream}.>")),
        js_api(&format!("CONSUMER.DELETE.{stream}.*")),
        js_api(&format!("CONSUMER.INFO.{stream}.*")),
        js_flow_control(stream),
    ]
}

/// Everything on one stream: its config, messages and consumers.
fn stream_full(stream: &str) -> Vec<String> {
    vec![
        js_api(&format!("STREAM.*.{stream}")),
        js_api(&format!("STREAM.MSG.*.{stream}")),
        js_api(&format!("DIRECT.GET.{stream}")),
        js_api(&format!("DIRECT.GET.{stream}.>")),
        js_api(&format!("CONSUMER.*.{stream}")),
        js_api(&format!("CONSUMER.*.{stream}.>")),
        js_api(&format!("CONSUMER.MSG.NEXT.{stream}.*")),
        format!("$JS.ACK.{stream}.>"),
        js_flow_control(stream),
    ]
}

/// Use a durable pull consumer `consumer` of `stream` (create it with
/// `filter`, look it up, fetch, ack).
fn pull_consumer(stream: &str, consumer: &str, filter: &str) -> Vec<String> {
    vec![
        js_api(&format!("CONSUMER.CREATE.{stream}.{consumer}.{filter}")),
        js_api(&format!("CONSUMER.INFO.{stream}.{consumer}")),
        js_api(&format!("CONSUMER.MSG.NEXT.{stream}.{consumer}")),
        js_ack(stream, consumer),
    ]
}

/// The throwaway stream that asks a cluster how many replicas it places.
fn replicas_probe(s: &Subjects) -> Vec<String> {
    let probe = s.replicas_probe_stream();
    vec![
        js_api(&format!("STREAM.CREATE.{probe}")),
        js_api(&format!("STREAM.DELETE.{probe}")),
    ]
}

fn node(s: &Subjects, id: &str) -> Permissions {
    let p = s.prefix();
    let checkpoints = object_stream(&s.checkpoints_store());
    let tasks = s.tasks_stream();
    let shards = s.shards_stream();
    let mut publish = vec![
        s.heartbeat(id),
        // Only to itself, at start: "is a node with my id alive already?"
        s.ctl(id, "ping"),
        s.audit("node.*"),
        // task.failed, task.dead, task.redelivered.
        s.audit("task.*"),
        s.event_outcome(id, "*"),
        s.result("*"),
        s.dlq("*"),
        // A task that came before its time waits as a message schedule
        // (delayed tasks only: a node creates no periodic schedules).
        s.delayed_tasks_wildcard(),
        s.shard_done(),
        kv_key(&s.nodes_bucket(), id),
        kv_key(&s.attempts_bucket(), "*"),
        // Running slots and token buckets are shared by every node (a node
        // takes and gives back slots by compare-and-set); limits are read.
        kv_key(&s.limit_state_bucket(), ">"),
        object_subjects(&s.checkpoints_store()),
        kv_key(&s.checkpoint_index_bucket(), ">"),
    ];
    // Resources a node creates when it starts first, and reads.
    for stream in [
        tasks.clone(),
        s.results_stream(),
        s.dlq_stream(),
        s.events_stream(),
        shards.clone(),
        kv_stream(&s.nodes_bucket()),
        kv_stream(&s.attempts_bucket()),
        kv_stream(&s.cancels_bucket()),
        kv_stream(&s.limits_bucket()),
        kv_stream(&s.limit_state_bucket()),
        kv_stream(&s.checkpoint_index_bucket()),
        checkpoints.clone(),
    ] {
        publish.extend(stream_create(&stream));
        publish.extend(stream_read(&stream));
    }
    publish.extend(stream_watch(&kv_stream(&s.cancels_bucket())));
    publish.extend(stream_watch(&kv_stream(&s.nodes_bucket())));
    publish.extend(stream_watch(&kv_stream(&s.limits_bucket())));
    publish.extend(stream_watch(&kv_stream(&s.limit_state_bucket())));
    publish.extend(stream_full(&checkpoints));
    let any_task = format!("{p}.tasks.*.*");
    publish.extend(pull_consumer(&tasks, "*", &any_task));
    publish.extend(pull_consumer(&shards, &s.shard_consumer(id), &s.shards(id)));
    publish.extend(replicas_probe(s));
    let mut subscribe = vec![
        s.ctl_node_wildcard(id),
        s.ctl_all_wildcard(),
        s.event_node_wildcard(id),
    ];
    subscribe.extend(micro_service(NODE_SERVICE));
    Permissions {
        publish,
        subscribe,
        allow_responses: true,
    }
}

/// A pool answers its own control subjects, reads its workers' heartbeats
/// and its queues' backlog (consumer info); it steers its workers by
/// signals, not by NATS.
fn pool(s: &Subjects, id: &str) -> Permissions {
    let tasks = s.tasks_stream();
    let publish = vec![
        js_api(&format!("STREAM.INFO.{tasks}")),
        js_api(&format!("CONSUMER.INFO.{tasks}.*")),
    ];
    let mut subscribe = vec![s.ctl_node_wildcard(id), s.heartbeat_all()];
    subscribe.extend(micro_service(POOL_SERVICE));
    Permissions {
        publish,
        subscribe,
        allow_responses: true,
    }
}

fn submitter(s: &Subjects) -> Permissions {
    let mut publish: Vec<String> = Priority::ALL.iter().map(|&q| s.task("*", q)).collect();
    publish.push(s.delayed_tasks_wildcard());
    publish.push(s.api("tasks.*"));
    publish.push(js_api(&format!("STREAM.INFO.{}", s.tasks_stream())));
    publish.extend(stream_read(&s.results_stream()));
    Permissions {
        publish,
        subscribe: vec![s.result("*")],
        allow_responses: false,
    }
}

fn coordinator(s: &Subjects) -> Permissions {
    let p = s.prefix();
    let mut publish = vec![
        format!("{p}.tasks.*.*"),
        s.delayed_wildcard(),
        s.result("*"),
        s.dlq("*"),
        s.events_wildcard(),
        s.shards("*"),
        s.ctl("*", "status"),
        s.task_lookup(),
        s.rebalance(),
    ];
    for b in s.all_buckets() {
        publish.push(kv_key(&b, ">"));
    }
    for stream in s.all_streams() {
        publish.extend(stream_full(&stream));
    }
    publish.extend(replicas_probe(s));
    let mut subscribe = vec![
        format!("{}.>", s.api_group()),
        s.shard_done(),
        s.rebalance(),
    ];
    subscribe.extend(micro_service(API_SERVICE));
    Permissions {
        publish,
        subscribe,
        allow_responses: true,
    }
}

/// Operator and sidecar: everything under the prefix and on jetweave's
/// resources, and the micro services' discovery.
fn admin(s: &Subjects) -> Permissions {
    let all = format!("{}.>", s.prefix());
    let mut publish = vec![all.clone(), "$SRV.>".to_string()];
    for b in s.all_buckets() {
        publish.push(kv_key(&b, ">"));
    }
    publish.push(object_subjects(&s.checkpoints_store()));
    for stream in s.all_streams() {
        publish.extend(stream_full(&stream));
    }
    publish.extend(replicas_probe(s));
    let mut subscribe = vec![all];
    subscribe.extend(micro_service(NODE_SERVICE));
    Permissions {
        publish,
        subscribe,
        allow_responses: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &[String], subject: &str) -> bool {
        list.iter().any(|pat| matches(pat, subject))
    }

    /// NATS subject matching: `*` one token, `>` the rest.
    fn matches(pattern: &str, subject: &str) -> bool {
        let mut p = pattern.split('.');
        let mut t = subject.split('.');
        loop {
            match (p.next(), t.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    #[test]
    fn a_node_cannot_steer_others() {
        let s = Subjects::new("acme").unwrap();
        let p = permissions(&s, &Role::Node("n1".into()), "_INBOX_X");
        for denied in [
            "acme.ctl.n2.drain",
            "acme.ctl.all.drain",
            "acme.ctl.n1.drain",
            "$KV.acme-nodes.n2",
            "acme.api.runs.create",
            "acme.api.tasks.submit",
            "acme.api.schedules.create",
            "acme.delayed.schedule.s1",
            "$JS.API.CONSUMER.CREATE.ACME_SHARDS.shards_n2.weave.shards.n2",
            "$JS.API.STREAM.DELETE.ACME_TASKS",
            "$JS.API.STREAM.UPDATE.ACME_TASKS",
        ] {
            assert!(!allows(&p.publish, denied), "node may publish {denied}");
        }
        for allowed in [
            "acme.node.n1.heartbeat",
            "$KV.acme-nodes.n1",
            "acme.results.t1",
            "$JS.API.CONSUMER.MSG.NEXT.ACME_TASKS.tasks_default_normal",
            "$JS.ACK.ACME_SHARDS.shards_n1.1.2.3.4.5",
        ] {
            assert!(
                allows(&p.publish, allowed),
                "node may not publish {allowed}"
            );
        }
        assert!(!allows(&p.subscribe, "acme.ctl.n2.drain"));
        assert!(!allows(&p.subscribe, "_INBOX.abc"));
        assert!(allows(&p.subscribe, "_INBOX_X.abc"));
    }

    #[test]
    fn only_operator_and_sidecar_send_control_verbs() {
        let s = Subjects::new("acme").unwrap();
        for role in [Role::Operator, Role::Sidecar] {
            let p = permissions(&s, &role, "_INBOX_X");
            assert!(allows(&p.publish, "acme.ctl.n2.drain"));
            assert!(allows(&p.publish, "acme.ctl.all.shutdown"));
        }
        for role in [Role::Submitter, Role::Coordinator, Role::Node("n1".into())] {
            let p = permissions(&s, &role, "_INBOX_X");
            assert!(!allows(&p.publish, "acme.ctl.n2.drain"), "{role:?}");
            assert!(!allows(&p.publish, "acme.ctl.all.resume"), "{role:?}");
        }
        let sub = permissions(&s, &Role::Submitter, "_INBOX_X");
        assert!(allows(&sub.publish, "acme.tasks.default.high"));
        assert!(allows(&sub.publish, "acme.api.tasks.cancel"));
        assert!(!allows(&sub.publish, "acme.api.runs.create"));
        assert!(!allows(&sub.publish, "acme.delayed.schedule.s1"));
        assert!(allows(&sub.publish, "acme.delayed.default.normal.t1"));
        assert!(!allows(&sub.publish, "$KV.acme-nodes.n1"));
    }
}
