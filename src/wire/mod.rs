//! The wire: what travels between processes. Ids ([`ids`]), the names of
//! every subject and JetStream resource ([`subjects`]) and every JSON
//! payload ([`protocol`]), and what each role may publish and subscribe to
//! ([`permissions`]). Nothing here talks to NATS; everything above
//! builds on it.

pub mod ids;
pub mod permissions;
pub mod protocol;
pub mod subjects;
pub mod trace;
