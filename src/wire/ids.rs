//! Ids that travel as subject tokens and KV keys (contract: Conventions):
//! node ids, run ids, queue and process names match `[A-Za-z0-9_-]{1,64}`,
//! task ids `[A-Za-z0-9_:-]{1,200}`. Anything else is rejected, never
//! rewritten, because an id that is not a single safe token would change
//! which subject a message lands on.

use crate::error::{Error, ErrorCode};

/// Checks a node id, run id, queue or process name: `[A-Za-z0-9_-]{1,64}`.
pub fn validate_id(what: &str, value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            ErrorCode::InvalidId,
            format!("invalid {what} {value:?}: must match [A-Za-z0-9_-]{{1,64}}"),
        ))
    }
}

/// Checks a task id: `[A-Za-z0-9_:-]{1,200}`.
pub fn validate_task_id(value: &str) -> Result<(), Error> {
    let ok = !value.is_empty()
        && value.len() <= 200
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            ErrorCode::InvalidId,
            format!("invalid task id {value:?}: must match [A-Za-z0-9_:-]{{1,200}}"),
        ))
    }
}

/// Encodes a task id as a KV key / single token: `:` is not allowed in KV
/// keys, so it becomes `=3A`; `=` itself never appears in a valid task id,
/// which makes the encoding reversible.
pub fn encode_key(task_id: &str) -> String {
    task_id.replace(':', "=3A")
}

/// Reverses [`encode_key`].
pub fn decode_key(key: &str) -> String {
    key.replace("=3A", ":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(validate_id("node id", "n-1_A").is_ok());
        assert!(validate_id("node id", "").is_err());
        assert!(validate_id("node id", "a.b").is_err());
        assert!(validate_id("node id", "a b").is_err());
        assert!(validate_id("node id", &"x".repeat(65)).is_err());
        assert!(validate_task_id("run:1:slice:0:10").is_ok());
        assert!(validate_task_id("a*").is_err());
    }

    #[test]
    fn key_encoding_round_trips() {
        let id = "run1:0:slice:0:25";
        let k = encode_key(id);
        assert!(!k.contains(':'));
        assert_eq!(decode_key(&k), id);
    }
}
