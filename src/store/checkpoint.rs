//! Checkpoints in the `P-checkpoints` JetStream object store (contract §8).
//!
//! One object per checkpoint, named `<task_id>/<unix_nanos:020>-<id>` so
//! names sort by time. [`Checkpoints::latest`] and [`Checkpoints::all`] list
//! the objects of one task; [`Checkpoints::save`] prunes the oldest beyond
//! `keep` per task. The object store chunks large bodies (512 KiB chunks),
//! so checkpoints of several MiB work.

use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use futures::StreamExt;
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

/// Access to the checkpoint store.
#[derive(Clone)]
pub struct Checkpoints {
    store: object_store::ObjectStore,
    keep: usize,
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
        let store = match js.get_object_store(&name).await {
            Ok(s) => s,
            Err(_) => match js
                .create_object_store(object_store::Config {
                    bucket: name.clone(),
                    description: Some("jetweave checkpoints".into()),
                    num_replicas: replicas.max(1),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => s,
                Err(e) => js
                    .get_object_store(&name)
                    .await
                    .map_err(|_| Error::nats(format!("cannot open object store {name}: {e}")))?,
            },
        };
        Ok(Checkpoints {
            store,
            keep: keep.max(1),
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
        let body = serde_json::to_vec(record)?;
        let meta = object_store::ObjectMetadata {
            name,
            chunk_size: Some(CHUNK),
            ..Default::default()
        };
        self.store
            .put(meta, &mut body.as_slice())
            .await
            .map_err(Error::nats_source)?;
        self.prune(&record.task_id).await
    }

    /// Names of a task's checkpoints, oldest first.
    async fn names(&self, task_id: &str) -> Result<Vec<String>, Error> {
        validate_task_id(task_id)?;
        let prefix = format!("{task_id}/");
        let mut list = self.store.list().await.map_err(Error::nats_source)?;
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
        let mut obj = self.store.get(name).await.map_err(Error::nats_source)?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), obj.read_to_end(&mut buf))
            .await
            .map_err(|_| Error::Timeout(format!("reading checkpoint {name}")))??;
        serde_json::from_slice(&buf).map_err(|e| {
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
        for n in self.names(task_id).await?.iter().rev() {
            match self.read(n).await {
                Ok(r) => return Ok(Some(r)),
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

    /// Deletes the oldest checkpoints beyond `keep`.
    async fn prune(&self, task_id: &str) -> Result<(), Error> {
        let names = self.names(task_id).await?;
        if names.len() > self.keep {
            for n in &names[..names.len() - self.keep] {
                let _ = self.store.delete(n).await;
            }
        }
        Ok(())
    }
}
