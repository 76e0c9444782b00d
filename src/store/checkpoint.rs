//! Checkpoints in the `P-checkpoints` JetStream object store (contract §8).
//!
//! One object per checkpoint, named `<task_id>/<unix_nanos:020>-<id>` so
//! names sort by time. The object store cannot list one task's objects
//! (its listing reads every object's metadata), so the KV bucket
//! `P-checkpoint-index` keeps, per task, the names of its kept checkpoints
//! (key: the task id with every character outside `[A-Za-z0-9_-]` written
//! `=XX`, its hex byte; value: `{"names": [oldest, ..., newest]}`).
//! [`Checkpoints::save`] stores the object, then adds its name to the index
//! by compare-and-set and deletes the names beyond `keep`;
//! [`Checkpoints::latest`] reads the index and then the newest object. So
//! neither lists the store: their cost does not grow with the number of
//! checkpoints it holds. [`Checkpoints::all`] still lists (it is for
//! inspection). A checkpoint written without updating the index (by an
//! older jetweave, or a writer that skips it) is seen by `all` only.
//! The object store chunks large bodies (512 KiB chunks), so checkpoints
//! of several MiB work.
//!
//! The body is the contract's JSON CheckpointRecord; a string payload that
//! needs no escaping is streamed into the object store from the record
//! itself (see `body`), so a save copies it once, into the chunks.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use crate::error::{Error, ErrorCode};
use crate::wire::protocol::{now_rfc3339, CheckpointRecord};
use crate::wire::subjects::{validate_task_id, Subjects};

/// Chunk size for checkpoint objects; larger than the default 128 KiB,
/// which measured faster for multi-MiB bodies.
const CHUNK: usize = 512 * 1024;

/// Whose checkpoint it is: the ids a [`CheckpointRecord`] carries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckpointOwner {
    /// The task.
    pub task_id: String,
    /// The run, for a shard.
    pub run_id: Option<String>,
    /// The run's iteration, for a shard.
    pub iteration: Option<u64>,
    /// The shard key, for a shard.
    pub shard_key: Option<String>,
    /// The node writing it.
    pub node_id: String,
}

/// Access to the checkpoint store. Cheap to clone (every attempt's
/// context gets one): the store handles are shared.
#[derive(Clone)]
pub struct Checkpoints {
    inner: std::sync::Arc<Parts>,
}

/// What a [`Checkpoints`] shares: cloning the object store and KV handles
/// themselves copies their streams' info (a profile of the throughput
/// bench showed it per task).
struct Parts {
    store: object_store::ObjectStore,
    index: kv::Store,
    keep: usize,
    /// Per task, the index entry this process last wrote and its revision
    /// (a guess for the next compare-and-set; a wrong one costs a read).
    written: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (Index, u64)>>>,
}

/// Tasks whose last index write a process remembers.
const WRITTEN_KEPT: usize = 4096;

/// A task's entry in `P-checkpoint-index`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Index {
    /// Its kept checkpoints' object names, oldest first.
    names: Vec<String>,
}

/// The index key of a task id: `[A-Za-z0-9_-]` as they are, every other
/// byte as `=XX` (a task id may hold `:` and `.`, which KV keys may not or
/// must not start, end or double).
fn index_key(task_id: &str) -> String {
    let mut key = String::with_capacity(task_id.len());
    for b in task_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            key.push(b as char);
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    key
}

/// A [`CheckpointRecord`] body but its payload, which [`body`] appends.
#[derive(Serialize)]
struct Head<'a> {
    checkpoint_id: &'a str,
    task_id: &'a str,
    run_id: &'a Option<String>,
    iteration: Option<u64>,
    shard_key: &'a Option<String>,
    node_id: &'a str,
    created_at: &'a str,
    metadata: &'a Map<String, Value>,
}

/// A record's JSON body in three parts to read one after the other.
struct Body<'a> {
    head: Vec<u8>,
    payload: &'a [u8],
    tail: &'static [u8],
}

impl Body<'_> {
    fn reader(&self) -> impl tokio::io::AsyncRead + Unpin + '_ {
        self.head.as_slice().chain(self.payload).chain(self.tail)
    }
}

/// A record's JSON body in three parts to read one after the other: the
/// other fields, the payload and the closing bytes. A string payload that
/// needs no escaping (the common large one: text, base64) is not copied:
/// the object store reads it from the record (at 1 MiB, the copy and
/// serde_json's byte-by-byte escape scan were 0.5 ms of a 6-8 ms save+load).
fn body(record: &CheckpointRecord) -> Result<Body<'_>, Error> {
    let mut head = serde_json::to_vec(&Head {
        checkpoint_id: &record.checkpoint_id,
        task_id: &record.task_id,
        run_id: &record.run_id,
        iteration: record.iteration,
        shard_key: &record.shard_key,
        node_id: &record.node_id,
        created_at: &record.created_at,
        metadata: &record.metadata,
    })?;
    head.pop(); // the closing brace; the payload comes before it
    head.extend_from_slice(b",\"payload\":");
    match &record.payload {
        Value::String(s) if needs_no_escape(s.as_bytes()) => {
            head.push(b'"');
            Ok(Body {
                head,
                payload: s.as_bytes(),
                tail: b"\"}",
            })
        }
        other => {
            serde_json::to_writer(&mut head, other)?;
            Ok(Body {
                head,
                payload: b"",
                tail: b"}",
            })
        }
    }
}

/// Whether `bytes` may stand in a JSON string as they are: no quote,
/// backslash or control character. Checked 64 bytes at a time without an
/// early exit, which the compiler turns into vector instructions.
fn needs_no_escape(bytes: &[u8]) -> bool {
    bytes.chunks(64).all(|c| {
        !c.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    })
}

impl Checkpoints {
    /// Opens (or creates) the object store; `keep` checkpoints per task are
    /// kept, older ones pruned.
    pub async fn open(
        client: async_nats::Client,
        subjects: &Subjects,
        keep: usize,
        replicas: usize,
    ) -> Result<Self, Error> {
        let js = jetstream::new(client);
        let name = subjects.checkpoints_store();
        let config = object_store::Config {
            bucket: name.clone(),
            description: Some("jetweave checkpoints".into()),
            num_replicas: replicas.max(1),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        // A create that fails as a whole (a forming cluster with a peer
        // not placed yet: "no suitable peers") or times out is tried
        // again, as for every other resource (see `settle`).
        let passes = |e: &jetstream::context::CreateObjectStoreError| {
            use jetstream::context::CreateKeyValueErrorKind as K;
            matches!(e.kind(), K::TimedOut | K::BucketCreate)
        };
        let store = match js.get_object_store(&name).await {
            Ok(s) => s,
            Err(_) => {
                match super::settle(|| js.create_object_store(config.clone()), passes).await {
                    Ok(s) => s,
                    Err(e) => js.get_object_store(&name).await.map_err(|_| {
                        Error::nats(format!("cannot open object store {name}: {e}"))
                    })?,
                }
            }
        };
        let index = super::open_bucket(
            &js,
            super::bucket_config(
                subjects.checkpoint_index_bucket(),
                "jetweave checkpoint index: the kept checkpoint names per task",
                replicas,
                None,
                false,
            ),
        )
        .await?;
        Ok(Checkpoints {
            inner: std::sync::Arc::new(Parts {
                store,
                index,
                keep: keep.max(1),
                written: Default::default(),
            }),
        })
    }

    /// Saves a checkpoint for `owner` (a task, and its shard if it is one).
    pub async fn save(
        &self,
        owner: impl Into<CheckpointOwner>,
        payload: Value,
        metadata: Map<String, Value>,
    ) -> Result<CheckpointRecord, Error> {
        let owner = owner.into();
        let record = CheckpointRecord {
            checkpoint_id: uuid::Uuid::new_v4().simple().to_string(),
            task_id: owner.task_id,
            run_id: owner.run_id,
            iteration: owner.iteration,
            shard_key: owner.shard_key,
            node_id: owner.node_id,
            created_at: now_rfc3339(),
            payload,
            metadata,
        };
        self.put(&record).await?;
        Ok(record)
    }

    /// Stores a record as it is.
    pub async fn put(&self, record: &CheckpointRecord) -> Result<(), Error> {
        validate_task_id(&record.task_id)?;
        let nanos = time::OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .max(0);
        let name = format!("{}/{:020}-{}", record.task_id, nanos, record.checkpoint_id);
        let body = body(record)?;
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            chunk_size: Some(CHUNK),
            ..Default::default()
        };
        let mut reader = body.reader();
        self.inner
            .store
            .put(meta, &mut reader)
            .await
            .map_err(Error::nats_source)?;
        for old in self.index_add(&record.task_id, name).await? {
            let _ = self.inner.store.delete(&old).await;
        }
        Ok(())
    }

    /// A task's index entry and its revision (none yet: revision 0).
    async fn index_get(&self, task_id: &str) -> Result<(Index, u64), Error> {
        let entry = self
            .inner
            .index
            .entry(index_key(task_id))
            .await
            .map_err(Error::nats_source)?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let idx = serde_json::from_slice(&e.value).unwrap_or_default();
                Ok((idx, e.revision))
            }
            Some(e) => Ok((Index::default(), e.revision)),
            None => Ok((Index::default(), 0)),
        }
    }

    /// Adds `name` to the task's index (compare-and-set, tried again when
    /// another writer came first) and returns the names it dropped beyond
    /// `keep`, whose objects the caller deletes.
    async fn index_add(&self, task_id: &str, name: String) -> Result<Vec<String>, Error> {
        let key = index_key(task_id);
        // The first try writes what this process last wrote for the task
        // (or creates the entry), with no read: one round trip for a task
        // that checkpoints again here. A conflict reads the entry.
        let mut known = self.written(task_id);
        for _ in 0..10 {
            let (mut idx, revision) = match known.take() {
                Some(k) => k,
                None => self.index_get(task_id).await?,
            };
            idx.names.push(name.clone());
            idx.names.sort();
            idx.names.dedup();
            let over = idx.names.len().saturating_sub(self.inner.keep);
            let dropped: Vec<String> = idx.names.drain(..over).collect();
            let body: bytes::Bytes = serde_json::to_vec(&idx)?.into();
            let written = if revision == 0 {
                let r = self.inner.index.create(&key, body).await;
                r.map_err(|e| e.to_string())
            } else {
                let r = self.inner.index.update(&key, body, revision).await;
                r.map_err(|e| e.to_string())
            };
            match written {
                Ok(rev) => {
                    self.remember(task_id, idx, rev);
                    return Ok(dropped);
                }
                Err(e) => tracing::debug!(task_id, error = %e, "checkpoint index changed; again"),
            }
        }
        Err(Error::nats(format!(
            "checkpoint index of {task_id} kept changing under ten writes"
        )))
    }

    /// What this process last wrote to a task's index entry, if anything:
    /// a new task's entry does not exist yet (revision 0: create).
    fn written(&self, task_id: &str) -> Option<(Index, u64)> {
        let cache = self.inner.written.lock().unwrap_or_else(|p| p.into_inner());
        Some(cache.get(task_id).cloned().unwrap_or_default())
    }

    fn remember(&self, task_id: &str, idx: Index, revision: u64) {
        let mut cache = self.inner.written.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: the tasks of one process's recent checkpoints.
        if cache.len() >= WRITTEN_KEPT {
            cache.clear();
        }
        cache.insert(task_id.to_string(), (idx, revision));
    }

    /// Names of a task's checkpoints, oldest first.
    async fn names(&self, task_id: &str) -> Result<Vec<String>, Error> {
        validate_task_id(task_id)?;
        let prefix = format!("{task_id}/");
        let mut list = self.inner.store.list().await.map_err(Error::nats_source)?;
        let mut names = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(Error::nats_source)?;
            if !info.deleted && info.name.starts_with(&prefix) {
                names.push(info.name);
            }
        }
        names.sort();
        Ok(names)
    }

    async fn read(&self, name: &str) -> Result<CheckpointRecord, Error> {
        self.read_if_there(name)
            .await?
            .ok_or_else(|| Error::nats(format!("checkpoint {name} not found")))
    }

    /// A checkpoint, or `None` when its object is gone (pruned).
    async fn read_if_there(&self, name: &str) -> Result<Option<CheckpointRecord>, Error> {
        let mut obj = match self.inner.store.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::nats_source(e)),
        };
        let mut buf = Vec::with_capacity(obj.info().size);
        tokio::time::timeout(Duration::from_secs(30), obj.read_to_end(&mut buf))
            .await
            .map_err(|_| Error::Timeout(format!("reading checkpoint {name}")))??;
        serde_json::from_slice(&buf).map(Some).map_err(|e| {
            Error::invalid(
                ErrorCode::InvalidJson,
                format!("checkpoint {name} is corrupt: {e}"),
            )
        })
    }

    /// The newest readable checkpoint of a task. A corrupt object (one
    /// that does not parse as a CheckpointRecord) is logged and skipped, so
    /// a handler resumes from the checkpoint before it instead of starting
    /// over or failing; errors reaching the store are returned.
    pub async fn latest(&self, task_id: &str) -> Result<Option<CheckpointRecord>, Error> {
        validate_task_id(task_id)?;
        let (idx, _) = self.index_get(task_id).await?;
        for n in idx.names.iter().rev() {
            match self.read_if_there(n).await {
                Ok(Some(r)) => return Ok(Some(r)),
                // Pruned by a concurrent save after the index was read.
                Ok(None) => tracing::debug!(name = %n, "indexed checkpoint gone"),
                Err(
                    e @ Error::Invalid {
                        code: ErrorCode::InvalidJson,
                        ..
                    },
                ) => {
                    tracing::warn!(name = %n, error = %e, "skipping corrupt checkpoint")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// All checkpoints of a task, oldest first (unreadable ones skipped).
    pub async fn all(&self, task_id: &str) -> Result<Vec<CheckpointRecord>, Error> {
        let mut out = Vec::new();
        for n in self.names(task_id).await? {
            match self.read(&n).await {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(name = %n, error = %e, "skipping unreadable checkpoint"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: Value) -> CheckpointRecord {
        let mut metadata = Map::new();
        metadata.insert("step".into(), Value::from(3));
        CheckpointRecord {
            checkpoint_id: "c1".into(),
            task_id: "t:1".into(),
            run_id: Some("r1".into()),
            iteration: Some(2),
            shard_key: Some("s0".into()),
            node_id: "n1".into(),
            created_at: now_rfc3339(),
            payload,
            metadata,
        }
    }

    fn encoded(r: &CheckpointRecord) -> Vec<u8> {
        let b = body(r).expect("encodes");
        [b.head.as_slice(), b.payload, b.tail].concat()
    }

    #[test]
    fn every_field_and_payload_kind_round_trips() {
        let payloads = [
            Value::from("plain text, no escapes"),
            Value::from("quote \" backslash \\ newline \n tab \t bell \u{7} é ✓"),
            Value::from(""),
            serde_json::json!({"n": 1, "list": [1, "two", null], "s": "a\"b"}),
            Value::Null,
            Value::from(1.5),
        ];
        for p in payloads {
            let r = record(p);
            let bytes = encoded(&r);
            let back: CheckpointRecord = serde_json::from_slice(&bytes).expect("valid JSON");
            assert_eq!(back, r);
        }
    }

    #[test]
    fn only_quotes_backslashes_and_control_characters_need_escaping() {
        assert!(needs_no_escape(b"abc \x7f \xc3\xa9"));
        for bad in [b'"', b'\\', b'\n', 0u8, 0x1f] {
            let mut long = vec![b'a'; 300];
            long[257] = bad;
            assert!(!needs_no_escape(&long), "byte {bad:#x}");
        }
    }
}
