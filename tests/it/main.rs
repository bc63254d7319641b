//! metcd's integration tests: one binary, one module per area, every test against real
//! `metcd` processes on ports the harness hands out (`common::port_block`).
//!
//! Tests run on the default engine unless the engines differ in what they check (durability,
//! recovery, snapshots, crashes, full disks: `engine_tests!` runs those once per engine); the
//! data model is checked on every engine below the faces, by the engine conformance suite.
//!
//! `cargo test` runs them all; `cargo test --test it <area>::` runs one area (`tls::`,
//! `jepsen::`). The fault suite needs crash points compiled in:
//! `cargo test --features failpoints --test it -- crash:: injected::`.

#[macro_use]
mod common;

mod auth;
mod bad_input;
mod bench_tool;
mod consistency;
mod coordination;
#[cfg(feature = "failpoints")]
mod crash;
mod disk_full;
mod docs;
mod etcd_diff;
mod etcdctl;
mod faces;
mod faults;
mod formats;
mod grpc_client;
mod history;
#[cfg(feature = "failpoints")]
mod injected;
mod jepsen;
mod layout;
mod leadership;
mod leases;
mod listing;
mod lost_data;
mod membership;
mod observability;
mod peer;
mod quota;
mod recovery;
mod replication;
mod seed_flow;
mod snapshot;
mod tls;
mod trust;
mod upgrade;
mod watch;
mod wire;
