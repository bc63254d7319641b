//! The fault suite's gRPC side: some clients and one watcher speak etcd's v3 gRPC API (through
//! the `etcd-client` crate, built from etcd's own protos) instead of the HTTP API, so the same
//! linearizability and watch checks cover both APIs.
//!
//! A call counts as not applied only when it certainly was not (the connection was refused,
//! or metcd answered "no leader", "too many requests" or a bad request); any other failure is
//! an unknown outcome, as for the HTTP clients.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tonic::Code;

use super::checker::Outcome;
use super::{Api, CLIENT_TIMEOUT};

pub struct Grpc {
    rt: tokio::runtime::Runtime,
    /// One connection per member's client port, dropped after any failure.
    clients: HashMap<u16, Client>,
}

/// Why a call has no result: `None` if it certainly did not take effect.
type Failed = Option<Outcome>;

fn refused(text: &str) -> bool {
    text.contains("Connection refused") || text.contains("ConnectionRefused")
}

/// Whether a failed call certainly had no effect.
fn not_applied(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(s.code(), Code::InvalidArgument)
                || s.message() == "etcdserver: no leader"
                || s.message() == "etcdserver: too many requests"
                || refused(s.message())
                || refused(&format!("{s:?}"))
        }
        other => refused(&format!("{other:?}")),
    }
}

pub fn key(k: usize) -> String {
    format!("jepsen/k{k}")
}

impl Grpc {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        Grpc {
            rt,
            clients: HashMap::new(),
        }
    }

    /// Runs one call on member `port`'s connection, within the client timeout.
    pub(super) fn call<T, F>(&mut self, port: u16, f: impl FnOnce(Client) -> F) -> Result<T, Failed>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = match self.clients.get(&port) {
            Some(c) => c.clone(),
            None => {
                let connect = crate::common::grpc_connect(port);
                // The timer is made inside the runtime, which it needs.
                let connected = self.rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(2), connect).await
                });
                match connected {
                    Ok(Ok(c)) => {
                        self.clients.insert(port, c.clone());
                        c
                    }
                    // Nothing was sent.
                    _ => return Err(None),
                }
            }
        };
        let answer = self
            .rt
            .block_on(async { tokio::time::timeout(CLIENT_TIMEOUT, f(client)).await });
        match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.clients.remove(&port);
                Err(if not_applied(&e) {
                    None
                } else {
                    Some(Outcome::Unknown)
                })
            }
            Err(_) => {
                self.clients.remove(&port);
                Err(Some(Outcome::Unknown))
            }
        }
    }
}

impl Api for Grpc {
    fn read(&mut self, port: u16, k: usize) -> Option<(Option<u64>, Option<String>)> {
        let resp = self
            .call(port, |mut c| async move { c.get(key(k), None).await })
            .ok()?;
        match resp.kvs().first() {
            None => Some((None, None)),
            Some(kv) => {
                let value = kv.value_str().ok()?.parse().ok()?;
                Some((Some(value), Some(kv.mod_revision().to_string())))
            }
        }
    }

    fn write(&mut self, port: u16, k: usize, v: u64) -> Option<Outcome> {
        match self.call(port, |mut c| async move {
            c.put(key(k), v.to_string(), None).await
        }) {
            Ok(_) => Some(Outcome::Ok),
            Err(failed) => failed,
        }
    }

    fn delete(&mut self, port: u16, k: usize) -> Option<Outcome> {
        match self.call(port, |mut c| async move { c.delete(key(k), None).await }) {
            Ok(r) => Some(Outcome::Deleted(r.deleted() > 0)),
            Err(failed) => failed,
        }
    }

    fn cas(&mut self, port: u16, k: usize, token: &str, new: u64) -> Option<Outcome> {
        let rev: i64 = token.parse().ok()?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key(k), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key(k), new.to_string(), None)]);
        match self.call(port, |mut c| async move { c.txn(txn).await }) {
            Ok(r) if r.succeeded() => Some(Outcome::Ok),
            Ok(_) => Some(Outcome::CasFailed),
            Err(failed) => failed,
        }
    }
}
