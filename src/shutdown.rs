//! One explicit shutdown mechanism, handed to every long-running task.
//!
//! Like mini-redis's `Shutdown`, but built on tokio-util's
//! `CancellationToken` so it can be cloned freely and nested: a node owns a
//! root [`Shutdown`], each part of the node gets a clone (or a child that can
//! be stopped on its own, e.g. one process), and `trigger()` on the root
//! reaches all of them. Tasks `select!` on [`Shutdown::wait`].

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A new, untriggered signal.
    pub fn new() -> Self {
        Shutdown {
            token: CancellationToken::new(),
        }
    }

    /// A signal that triggers when this one does, and can also be triggered
    /// on its own without affecting the parent.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// Triggers the signal (idempotent).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Has it been triggered?
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the signal is triggered.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }
}
