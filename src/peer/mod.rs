//! The peer network, after etcd's rafthttp: how members reach each other.
//!
//! - [`transport`]: the sending half: one long-lived stream of raft messages per peer, and a
//!   streamed request per snapshot.
//! - [`api`]: the receiving half: the HTTP server on a member's peer URL, which checks who is
//!   talking before anything reaches the raft node.
//! - [`client`]: calls outside the raft streams: a starting member's probe, a joining member's
//!   search for the leader, and membership requests forwarded to the leader.

pub mod api;
pub mod client;
pub mod transport;
