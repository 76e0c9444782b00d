//! A pool's worker processes: spawned from a command template, signalled,
//! and watched (each exit is reported on a channel, with the generation of
//! the process so a late report of a replaced one is ignored).

use std::path::PathBuf;
use std::process::Stdio;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::error::Error;

/// The text `{node_id}` in a worker command's arguments and environment is
/// replaced by the worker's node id.
pub const NODE_ID_PLACEHOLDER: &str = "{node_id}";

/// How a worker process is started.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments (`{node_id}` replaced).
    pub args: Vec<String>,
    /// Extra environment (`{node_id}` replaced in values); the pool also
    /// sets `JETWEAVE_NODE_ID`, `NATS_URL` and `JETWEAVE_QUEUES`.
    pub env: Vec<(String, String)>,
}

/// A worker process that ended: its slot, generation and exit status.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) slot: u32,
    pub(crate) generation: u64,
    pub(crate) status: String,
}

/// Starts the worker `node_id` for `slot`; its exit is sent on `exits`.
pub(crate) fn spawn(
    cmd: &WorkerCommand,
    base_env: &[(&str, String)],
    node_id: &str,
    slot: u32,
    generation: u64,
    exits: mpsc::UnboundedSender<Exit>,
    tracker: &TaskTracker,
) -> Result<u32, Error> {
    let fill = |s: &str| s.replace(NODE_ID_PLACEHOLDER, node_id);
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(cmd.args.iter().map(|a| fill(a)))
        .env("JETWEAVE_NODE_ID", node_id)
        .envs(base_env.iter().map(|(k, v)| (*k, v.clone())))
        .envs(cmd.env.iter().map(|(k, v)| (k.clone(), fill(v))))
        .stdin(Stdio::null());
    // A worker outlives no pool: if the pool dies (even by SIGKILL), its
    // workers get SIGTERM and drain.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(|e| {
        Error::Config(format!(
            "cannot start worker {node_id} ({}): {e}",
            cmd.program.display()
        ))
    })?;
    let pid = child.id().unwrap_or(0);
    tracker.spawn(async move {
        let status = match child.wait().await {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let _ = exits.send(Exit {
            slot,
            generation,
            status,
        });
    });
    Ok(pid)
}

/// Sends SIGTERM (drain, finish running tasks, exit) to `pid`.
pub(crate) fn terminate(pid: u32) {
    if pid > 0 {
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}
