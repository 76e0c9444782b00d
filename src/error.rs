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
    /// The process exists but is not running.
    ProcessStopped,
    /// The task already has a terminal result.
    AlreadyFinished,
    /// The operation is refused while the node drains.
    Draining,
    /// NATS or JetStream failed or could not be reached.
    Nats,
    /// Nobody answered in time.
    Timeout,
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
            ErrorCode::ProcessStopped => "process_stopped",
            ErrorCode::AlreadyFinished => "already_finished",
            ErrorCode::Draining => "draining",
            ErrorCode::Nats => "nats",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

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
    #[error("nats: {0}")]
    Nats(String),
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
    /// Local I/O failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// An [`Error::Invalid`] with `code` and `message`.
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    /// A NATS error from anything displayable.
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }

    /// The code an error reply carries.
    pub fn code(&self) -> String {
        match self {
            Error::Invalid { code, .. } => code.as_str().to_string(),
            Error::Nats(_) => ErrorCode::Nats.as_str().to_string(),
            Error::Remote { code, .. } => code.clone(),
            Error::Timeout(_) => ErrorCode::Timeout.as_str().to_string(),
            Error::Config(_) => ErrorCode::InvalidValue.as_str().to_string(),
            Error::Io(_) => ErrorCode::Internal.as_str().to_string(),
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
