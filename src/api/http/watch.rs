//! `GET /<key>?watch=true`: a stream of changes, one JSON object per line
//! (`application/x-ndjson`), or Server-Sent Events with `Accept: text/event-stream`.
//!
//! Options: `prefix=true` or `end=` (a range), `start_revision=N` (default: the next
//! revision), `prev_kv=true`, `progress_ms=N`, `no_put`, `no_delete`, `encoding=base64`.
//!
//! Lines:
//! - first `{"created": true, "revision": R, "start_revision": S}` (R: the store revision here);
//! - events `{"type": "put"|"delete", "key", "value", "create_revision", "mod_revision",
//!   "version", "lease"?, "prev_kv"?}` in revision order, the events of one revision in one
//!   chunk; a delete carries its revision as `mod_revision`;
//! - `{"progress": {"revision": R, "leader": bool}}`: every event up to R has been sent, and
//!   whether this member knows a leader (a member without one keeps watchers open; it sends
//!   no event that is not committed);
//! - last, if history the watcher still needs is compacted:
//!   `{"canceled": true, "reason", "compact_revision": C}`.
//!
//! Guarantees (as etcd's): ordered by revision, no duplicates, no gaps from the start
//! revision on; a client that reconnects to any member with `start_revision` = last seen + 1
//! gets exactly the rest. A start revision below the compacted one answers 410 before any
//! line. Each watcher follows the one fan-out of applied changes ([`crate::store::watch`]);
//! one that falls behind (slow client, missed batches, a restored snapshot) reads history
//! until it has caught up, with bounded memory.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::Service;
use super::error::ApiError;
use super::headers::{REVISION_HEADER, header_value};
use super::query::{Encoding, Query};
use super::range::to_json;
use crate::api::stopping;
use crate::service::access::{Access, Caller, Recheck};
use crate::service::watch::{CatchUp, Cursor, WatchRequest, prev_kv};
use crate::store::range::KeyRange;
use crate::store::watch::{Event, EventKind, Published};
use crate::store::{KvStore, RevisionError};

/// Chunks queued for a client before the watcher waits for it (and may fall behind).
const QUEUE: usize = 64;

/// Starts a watch: checks the start revision, then streams from a task of its own.
pub fn start(
    state: &Service,
    caller: &Caller,
    range: KeyRange,
    query: &Query,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let store = state.engine.clone();
    // Subscribe before looking at the revision: nothing applied after this is missed.
    let rx = store.hub().subscribe();
    let meta = store.meta();
    let start = query.start_revision.unwrap_or(meta.revision + 1);
    let cursor = state.watch(
        caller,
        WatchRequest {
            range,
            start: Some(start),
            prev_kv: query.prev_kv,
            no_put: query.no_put,
            no_delete: query.no_delete,
        },
    )?;
    if start < meta.compact_revision {
        return Err(ApiError::Revision(RevisionError::Compacted {
            requested: start,
            compact_revision: meta.compact_revision,
        }));
    }
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let (tx, body_rx) = mpsc::channel(QUEUE);
    let watcher = Watcher {
        store,
        leader: state.node.leader.clone(),
        cursor,
        encoding: query.encoding,
        sse,
        tx,
        closing: state.closing.clone(),
        caller: caller.clone(),
        access: state.access.clone(),
    };
    let created = json!({ "created": true, "revision": meta.revision, "start_revision": start });
    let progress = query.progress_ms.map(Duration::from_millis);
    tokio::spawn(watcher.run(rx, created, progress));
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(stream)).into_response();
    let h = resp.headers_mut();
    let content_type = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(REVISION_HEADER, header_value(&meta.revision.to_string()));
    Ok(resp)
}

struct Watcher {
    store: Arc<KvStore>,
    leader: Arc<std::sync::atomic::AtomicU64>,
    /// The range, the next revision to send and the filters ([`crate::service::watch`]).
    cursor: Cursor,
    encoding: Encoding,
    sse: bool,
    tx: mpsc::Sender<Bytes>,
    /// The member is stopping: the stream ends.
    closing: tokio::sync::watch::Receiver<bool>,
    /// Who watches, bound to the credential it came with: checked again whenever users or
    /// roles change.
    caller: Caller,
    access: Arc<Access>,
}

/// Why a watcher stops.
enum Stop {
    /// The client went away.
    Gone,
    /// History it needs is compacted (the cancel line is sent).
    Compacted,
    /// The caller's credential no longer stands, or it may no longer read the range (the
    /// cancel line is sent).
    Denied,
}

impl Watcher {
    async fn run(
        mut self,
        mut rx: broadcast::Receiver<Published>,
        created: Value,
        progress: Option<Duration>,
    ) {
        if self.send(&[created]).await.is_err() {
            return;
        }
        let mut closing = self.closing.clone();
        let mut ticker = progress.map(|p| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            if self.recheck().await.is_err() {
                return;
            }
            if !self.cursor.synced(&self.store) && self.catch_up().await.is_err() {
                return;
            }
            let progress_due = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let sent = tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(Published::Changes(batch)) if batch.from <= self.cursor.next => {
                        if self.recheck().await.is_err() {
                            return;
                        }
                        match self.cursor.deliver(batch.from, batch.revision, &batch.events) {
                            Some(events) => self.send_events(&events).await,
                            None => self.catch_up().await,
                        }
                    }
                    // Missed batches, a lag or a restore: history has what came since.
                    Ok(Published::Changes(_)) | Ok(Published::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.catch_up().await
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = progress_due => {
                    let leader = self.leader.load(Relaxed) != 0;
                    let caught_up = (self.cursor.next - 1).min(self.store.revision());
                    let line = json!({ "progress": { "revision": caught_up, "leader": leader } });
                    self.send(&[line]).await
                }
                () = self.tx.closed() => return,
                () = stopping(&mut closing) => return,
            };
            if sent.is_err() {
                return;
            }
        }
    }

    /// With auth on: once users or roles change, the watch's credential is checked again
    /// ([`Caller::recheck`]); then its range. A watcher whose credential no longer stands, or
    /// that may no longer read its range, ends with `{"canceled": true, "reason": ...}`
    /// (etcd's reason: "invalid auth token", "permission denied", ...; etcd checks only when
    /// a watch is created).
    async fn recheck(&mut self) -> Result<(), Stop> {
        let reason = match self.caller.recheck(&self.access) {
            Recheck::Same => return Ok(()),
            Recheck::Revoked(denied) => denied.to_string(),
            Recheck::Refreshed(caller) => {
                self.caller = caller;
                match self.cursor.permitted(&self.caller) {
                    Ok(()) => return Ok(()),
                    Err(denied) => denied.to_string(),
                }
            }
        };
        let line = json!({ "canceled": true, "reason": reason });
        self.send(&[line]).await?;
        Err(Stop::Denied)
    }

    /// Reads history from `next` until it reaches the store's revision.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        while !self.cursor.synced(&self.store) {
            let from = self.cursor.next;
            match self.cursor.catch_up(&self.store).await {
                Ok(CatchUp::Events { events, .. }) => {
                    let events: Vec<&Event> = events.iter().collect();
                    self.send_events(&events).await?;
                }
                Ok(CatchUp::Compacted { compact_revision }) => {
                    let line = json!({
                        "canceled": true,
                        "reason": format!("required revision {from} has been compacted"),
                        "compact_revision": compact_revision,
                    });
                    let _ = self.send(&[line]).await;
                    return Err(Stop::Compacted);
                }
                Err(e) => {
                    let line = json!({ "canceled": true, "reason": e.to_string() });
                    let _ = self.send(&[line]).await;
                    return Err(Stop::Gone);
                }
            }
        }
        Ok(())
    }

    /// Sends events (those the cursor wants), one revision per chunk.
    async fn send_events(&self, events: &[&Event]) -> Result<(), Stop> {
        let mut lines = Vec::new();
        let mut revision = None;
        for e in events {
            if revision.is_some_and(|r| r != e.revision()) {
                self.send(&lines).await?;
                lines.clear();
            }
            revision = Some(e.revision());
            lines.push(self.line(e).await);
        }
        self.send(&lines).await
    }

    async fn line(&self, e: &Event) -> Value {
        let mut v = match e.kind {
            EventKind::Put => to_json(e.kv.clone(), self.encoding),
            EventKind::Delete => {
                let mut v = to_json(e.kv.clone(), self.encoding);
                if let Some(o) = v.as_object_mut() {
                    o.retain(|k, _| k.starts_with("key") || k == "mod_revision");
                }
                v
            }
        };
        if let Some(o) = v.as_object_mut() {
            let kind = if e.kind == EventKind::Put {
                "put"
            } else {
                "delete"
            };
            o.insert("type".into(), kind.into());
            if self.cursor.prev_kv
                && let Some(prev) = prev_kv(&self.store, e).await
            {
                o.insert("prev_kv".into(), to_json(prev, self.encoding));
            }
        }
        v
    }

    /// Sends lines as one chunk; fails once the client has gone.
    async fn send(&self, lines: &[Value]) -> Result<(), Stop> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut chunk = Vec::new();
        for line in lines {
            if self.sse {
                chunk.extend_from_slice(b"data: ");
            }
            chunk.extend_from_slice(line.to_string().as_bytes());
            chunk.extend_from_slice(if self.sse { b"\n\n" } else { b"\n" });
        }
        let mut closing = self.closing.clone();
        tokio::select! {
            sent = self.tx.send(Bytes::from(chunk)) => sent.map_err(|_| Stop::Gone),
            // A client that does not read must not hold the member's shutdown up.
            () = stopping(&mut closing) => Err(Stop::Gone),
        }
    }
}
