//! Named processes a node hosts (contract §4, seed `000`): long-running
//! units, each bound to a handler, with a state, a `process_id` that changes
//! on every start, and an inbox of injected events.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::ProcessSpec;
use crate::error::{Error, ErrorCode};
use crate::handler::Handlers;
use crate::shutdown::Shutdown;
use crate::wire::protocol::{ProcessInfo, ProcessState};

struct Process {
    spec: ProcessSpec,
    state: ProcessState,
    process_id: String,
    events_handled: u64,
    /// Stops the events this incarnation is running.
    stop: Shutdown,
}

impl Process {
    fn info(&self) -> ProcessInfo {
        ProcessInfo {
            name: self.spec.name.clone(),
            state: self.state,
            process_id: self.process_id.clone(),
            handler: self.spec.handler.clone(),
            events_handled: self.events_handled,
        }
    }
}

/// The process table of one node.
pub(crate) struct Processes {
    table: Mutex<BTreeMap<String, Process>>,
    root: Shutdown,
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Processes {
    /// Builds the table; processes with `autostart` are started.
    pub(crate) fn new(specs: &[ProcessSpec], handlers: &Handlers, root: Shutdown) -> Self {
        let table = specs
            .iter()
            .map(|s| {
                let state = if !s.autostart {
                    ProcessState::Stopped
                } else if handlers.get(&s.handler).is_some() {
                    ProcessState::Running
                } else {
                    tracing::warn!(process = %s.name, handler = %s.handler, "unknown handler; process failed");
                    ProcessState::Failed
                };
                (
                    s.name.clone(),
                    Process {
                        spec: s.clone(),
                        state,
                        process_id: new_id(),
                        events_handled: 0,
                        stop: root.child(),
                    },
                )
            })
            .collect();
        Processes {
            table: Mutex::new(table),
            root,
        }
    }

    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Process) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut t = self.table.lock().expect("process table poisoned");
        let p = t.get_mut(name).ok_or_else(|| {
            Error::invalid(
                ErrorCode::UnknownProcess,
                format!("unknown process {name:?}"),
            )
        })?;
        f(p)
    }

    /// Every process.
    pub(crate) fn list(&self) -> Vec<ProcessInfo> {
        self.table
            .lock()
            .map(|t| t.values().map(Process::info).collect())
            .expect("lock poisoned")
    }

    /// How many processes are running.
    pub(crate) fn running_count(&self) -> usize {
        self.list()
            .iter()
            .filter(|p| p.state == ProcessState::Running)
            .count()
    }

    /// One process.
    pub(crate) fn status(&self, name: &str) -> Result<ProcessInfo, Error> {
        self.with(name, |p| Ok(p.info()))
    }

    /// Starts a stopped process (a running one stays as it is).
    pub(crate) fn start(&self, name: &str, handlers: &Handlers) -> Result<ProcessInfo, Error> {
        let root = self.root.clone();
        self.with(name, |p| {
            if p.state != ProcessState::Running {
                if handlers.get(&p.spec.handler).is_none() {
                    p.state = ProcessState::Failed;
                    return Err(Error::invalid(
                        ErrorCode::InvalidValue,
                        format!(
                            "process {name:?} cannot start: no handler {:?} on this node",
                            p.spec.handler
                        ),
                    ));
                }
                p.state = ProcessState::Running;
                p.process_id = new_id();
                p.events_handled = 0;
                p.stop = root.child();
            }
            Ok(p.info())
        })
    }

    /// Stops a process: its running events are cancelled, new ones refused.
    pub(crate) fn stop(&self, name: &str) -> Result<ProcessInfo, Error> {
        self.with(name, |p| {
            p.stop.trigger();
            if p.state == ProcessState::Running {
                p.state = ProcessState::Stopped;
            }
            Ok(p.info())
        })
    }

    /// Adds a process at run time (`process.<name>.add`); started at once
    /// unless `autostart` is false. An existing name is an error.
    pub(crate) fn add(&self, spec: ProcessSpec, handlers: &Handlers) -> Result<ProcessInfo, Error> {
        crate::wire::subjects::validate_id("process name", &spec.name)?;
        spec.trigger()
            .map_err(|e| Error::invalid(ErrorCode::InvalidValue, e.to_string()))?;
        if handlers.get(&spec.handler).is_none() {
            return Err(Error::invalid(
                ErrorCode::InvalidValue,
                format!("no handler {:?} on this node", spec.handler),
            ));
        }
        let name = spec.name.clone();
        {
            let mut t = self.table.lock().expect("process table poisoned");
            if t.contains_key(&name) {
                return Err(Error::invalid(
                    ErrorCode::AlreadyExists,
                    format!("process {name:?} exists"),
                ));
            }
            let autostart = spec.autostart;
            t.insert(
                name.clone(),
                Process {
                    spec,
                    state: if autostart {
                        ProcessState::Running
                    } else {
                        ProcessState::Stopped
                    },
                    process_id: new_id(),
                    events_handled: 0,
                    stop: self.root.child(),
                },
            );
        }
        self.status(&name)
    }

    /// Every process's name.
    pub(crate) fn names(&self) -> Vec<String> {
        self.table
            .lock()
            .expect("process table poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Stops and starts with a new `process_id`.
    pub(crate) fn restart(&self, name: &str, handlers: &Handlers) -> Result<ProcessInfo, Error> {
        self.stop(name)?;
        self.start(name, handlers)
    }

    /// Accepts an event: the handler type and the stop signal of the
    /// running incarnation, or an error if unknown or not running.
    pub(crate) fn accept_event(&self, name: &str) -> Result<(String, Shutdown), Error> {
        self.with(name, |p| {
            if p.state != ProcessState::Running {
                return Err(Error::invalid(
                    ErrorCode::ProcessStopped,
                    format!("process {name:?} is {:?}; start it first", p.state).to_lowercase(),
                ));
            }
            p.events_handled += 1;
            Ok((p.spec.handler.clone(), p.stop.clone()))
        })
    }
}

/// Starts the loop that fires a process's trigger (if it has one): an
/// event with `trigger_id` `every` or `cron` and the spec's `payload`,
/// while the process runs (a stopped process skips its ticks).
pub(crate) fn start_trigger(s: &std::sync::Arc<super::NodeState>, spec: &ProcessSpec) {
    let Ok(Some(trigger)) = spec.trigger() else {
        return;
    };
    let (s, name, payload) = (s.clone(), spec.name.clone(), spec.payload.clone());
    let loops = s.loops.clone();
    loops.spawn(async move {
        loop {
            tokio::select! {
                _ = s.shutdown.wait() => return,
                _ = tokio::time::sleep(trigger.next_in()) => {}
            }
            let ev = crate::wire::protocol::EventRequest {
                trigger_id: Some(trigger.kind().to_string()),
                trigger_type: Some("schedule".into()),
                payload: payload.clone(),
                metadata: Default::default(),
            };
            if let Err(e) = super::run_event(&s, &name, ev) {
                tracing::debug!(process = %name, error = %e, "trigger skipped");
            }
        }
    });
}
