//! Typed errors at the library boundary.
//!
//! Every error a request/reply endpoint returns is an [`Error`] turned into
//! the contract's `{"ok": false, "error", "code"}` reply; the `code` comes
//! from [`ErrorCode`].

use serde::{Deserialize, Serialize};

/// Machine-readable error codes, the `code` of an error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON, or not a JSON object.
    InvalidJson,
    /// A field is missing or has a wrong type or value.
    InvalidValue,
    /// An id does not match the contract's pattern.
    InvalidId,
    /// The control verb does not exist.
    UnknownVerb,
    /// No such node.
    UnknownNode,
    /// No such process on this node.
    UnknownProcess,
    /// No such task.
    UnknownTask,
    /// No such run.
    UnknownRun,
    /// No such entry (a dead letter to requeue).
    NotFound,
    /// The process exists but is not running.
    ProcessStopped,
    /// The task already has a terminal result.
    AlreadyFinished,
    /// Something with that name exists already (a process to add).
    AlreadyExists,
    /// The queue holds `max_pending` tasks already: try again later.
    QueueFull,
    /// The operation is refused while the node drains.
    Draining,
    /// A number outside the allowed range (a pool's `[min, max]`).
    OutOfRange,
    /// NATS or JetStream failed or could not be reached.
    Nats,
    /// Nobody answered in time.
    Timeout,
    /// The NATS server refused the operation: this user's permissions do
    /// not allow it (contract §13).
    PermissionDenied,
    /// A value names something this server is configured to refuse (an
    /// agent endpoint outside `--agent-allow`).
    NotAllowed,
    /// Anything else (a bug: bad input never produces it).
    Internal,
}

impl ErrorCode {
    /// The snake_case wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::InvalidId => "invalid_id",
            ErrorCode::UnknownVerb => "unknown_verb",
            ErrorCode::UnknownNode => "unknown_node",
            ErrorCode::UnknownProcess => "unknown_process",
            ErrorCode::UnknownTask => "unknown_task",
            ErrorCode::UnknownRun => "unknown_run",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ProcessStopped => "process_stopped",
            ErrorCode::AlreadyFinished => "already_finished",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Draining => "draining",
            ErrorCode::OutOfRange => "out_of_range",
            ErrorCode::Nats => "nats",
            ErrorCode::Timeout => "timeout",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotAllowed => "not_allowed",
            ErrorCode::Internal => "internal",
        }
    }
}

impl ErrorCode {
    /// The kind of failure this code names.
    pub fn kind(self) -> ErrorKind {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidValue
            | ErrorCode::InvalidId
            | ErrorCode::UnknownVerb
            | ErrorCode::OutOfRange => ErrorKind::Invalid,
            ErrorCode::UnknownNode
            | ErrorCode::UnknownProcess
            | ErrorCode::UnknownTask
            | ErrorCode::UnknownRun
            | ErrorCode::NotFound => ErrorKind::NotFound,
            ErrorCode::ProcessStopped
            | ErrorCode::AlreadyFinished
            | ErrorCode::AlreadyExists
            | ErrorCode::Draining => ErrorKind::Conflict,
            ErrorCode::Nats => ErrorKind::Unavailable,
            ErrorCode::Timeout => ErrorKind::Timeout,
            ErrorCode::PermissionDenied | ErrorCode::NotAllowed => ErrorKind::Forbidden,
            ErrorCode::QueueFull => ErrorKind::Overloaded,
            ErrorCode::Internal => ErrorKind::Internal,
        }
    }

    /// The code with this wire form, if there is one.
    pub fn parse(code: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(code.to_string())).ok()
    }
}

/// What went wrong, for callers to match on (HTTP statuses and exit codes
/// come from it, never from message text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request, or a value in it, is wrong.
    Invalid,
    /// The node, process, task or run named does not exist.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// Nobody listens on the subject (no such node, no coordinator).
    NoResponders,
    /// Nobody answered in time.
    Timeout,
    /// NATS or JetStream could not be reached or failed.
    Unavailable,
    /// The NATS server refused it: not allowed for this user.
    Forbidden,
    /// Too much work waiting (a full queue): back off and retry.
    Overloaded,
    /// The configuration is wrong.
    Config,
    /// Local I/O failed, or a bug.
    Internal,
}

type Source = Box<dyn std::error::Error + Send + Sync>;

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or configuration value was rejected.
    #[error("{message}")]
    Invalid {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// Talking to NATS failed.
    #[error("nats: {message}")]
    Nats {
        /// NoResponders, Timeout or Unavailable.
        kind: ErrorKind,
        /// What was being done, and the failure.
        message: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<Source>,
    },
    /// A remote endpoint answered with an error reply.
    #[error("{message} ({code})")]
    Remote {
        /// The reply's `code`.
        code: String,
        /// The reply's `error`.
        message: String,
    },
    /// Nobody answered in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Reading configuration failed.
    #[error("config: {0}")]
    Config(String),
    /// A value could not be encoded or decoded as JSON.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Local I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<async_nats::RequestError> for Error {
    fn from(e: async_nats::RequestError) -> Self {
        let kind = match e.kind() {
            async_nats::RequestErrorKind::NoResponders => ErrorKind::NoResponders,
            async_nats::RequestErrorKind::TimedOut => ErrorKind::Timeout,
            async_nats::RequestErrorKind::InvalidSubject
            | async_nats::RequestErrorKind::MaxPayloadExceeded => ErrorKind::Invalid,
            async_nats::RequestErrorKind::Other => ErrorKind::Unavailable,
        };
        Error::Nats {
            kind,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

impl Error {
    /// An [`Error::Invalid`] with `code` and `message`.
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    /// NATS unavailable or failing, described by a message.
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats {
            kind: ErrorKind::Unavailable,
            message: e.to_string(),
            source: None,
        }
    }

    /// The server refused an operation on `subject` for lack of permission
    /// (`reason` is the server's own words).
    pub fn forbidden(subject: &str, reason: &str) -> Self {
        Error::Nats {
            kind: ErrorKind::Forbidden,
            message: format!("permission denied on {subject}: {reason}"),
            source: None,
        }
    }

    /// NATS unavailable or failing, keeping the client's error as source.
    pub fn nats_source(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Nats {
            kind: ErrorKind::Unavailable,
            message: e.to_string(),
            source: Some(Box::new(e)),
        }
    }

    /// The same error with `context` (e.g. the subject) before its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        match self {
            Error::Nats {
                kind,
                message,
                source,
            } => Error::Nats {
                kind,
                message: format!("{context}: {message}"),
                source,
            },
            other => other,
        }
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { code, .. } => code.kind(),
            Error::Nats { kind, .. } => *kind,
            Error::Remote { code, .. } => ErrorCode::parse(code)
                .map(ErrorCode::kind)
                .unwrap_or(ErrorKind::Unavailable),
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::Config(_) => ErrorKind::Config,
            Error::Json(_) | Error::Io(_) => ErrorKind::Internal,
        }
    }

    /// The code an error reply carries.
    pub fn code(&self) -> String {
        match self {
            Error::Invalid { code, .. } => code.as_str().to_string(),
            Error::Nats {
                kind: ErrorKind::Timeout,
                ..
            }
            | Error::Timeout(_) => ErrorCode::Timeout.as_str().to_string(),
            Error::Nats {
                kind: ErrorKind::Forbidden,
                ..
            } => ErrorCode::PermissionDenied.as_str().to_string(),
            Error::Nats { .. } => ErrorCode::Nats.as_str().to_string(),
            Error::Remote { code, .. } => code.clone(),
            Error::Config(_) => ErrorCode::InvalidValue.as_str().to_string(),
            Error::Json(_) | Error::Io(_) => ErrorCode::Internal.as_str().to_string(),
        }
    }

    /// The reason an error reply carries.
    pub fn reason(&self) -> String {
        match self {
            Error::Invalid { message, .. } | Error::Remote { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_codes_not_text() {
        let e = Error::invalid(ErrorCode::UnknownTask, "no such task");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        let e = Error::Remote {
            code: "process_stopped".into(),
            message: "whatever it says".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let e = Error::Remote {
            code: "something_new".into(),
            message: "no such task".into(),
        };
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let e = Error::nats("stream gone").context("tasks get");
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert_eq!(e.code(), "nats");
        assert!(e.to_string().contains("tasks get: stream gone"));
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let e = Error::from(json);
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(std::error::Error::source(&e).is_some(), "keeps its source");
    }
}
