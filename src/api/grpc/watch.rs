//! The Watch service: one bidirectional stream carries any number of watchers.
//!
//! One task per stream owns its watchers and the stream's one subscription to the fan-out of
//! applied changes ([`crate::store::watch`]); a watcher costs a few hundred bytes, not a task
//! or a connection. Each watcher keeps `next`, the first revision it has not been sent:
//! - a batch of changes is delivered to every watcher whose `next` it reaches, each event
//!   once (revisions below `next` are skipped), and moves every such watcher past it;
//! - a watcher behind the store (it started in the past, the stream lagged, batches were
//!   missed or a snapshot was restored) reads history from `next` until it has caught up;
//! - history it needs that was compacted cancels it with `compact_revision`, no reason and
//!   revision 0 in the header (etcd's answer); so does a start revision below the compacted
//!   one, right after `created`, and a negative one (etcd's first revision is -1 until the
//!   first compaction: -1 then watches from the start). A later cancel of such a watcher is
//!   still answered `canceled`, as etcd's;
//! - an empty range (a range end at or below the key) is refused at once: created and
//!   canceled, watch id -1, "mvcc: watcher range is empty".
//!
//! Progress: a `progress_request` is answered with watch id -1 and a revision R once every
//! watcher on the stream is synced (every event up to R was sent); watchers created with
//! `progress_notify` get their own progress response every
//! `--watch-progress-notify-ms` when they had no events in between. Filters (NOPUT,
//! NODELETE), `prev_kv` and `fragment` (a response larger than `--max-request-bytes` is
//! split, each part but the last marked `fragment`) are as etcd's. Watch ids are assigned
//! from 0 per stream unless the client picks one; a taken id is refused with `canceled`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status, Streaming};

use super::pb::mvccpb;
use super::rpc::{self, watch_create_request::FilterType, watch_request};
use super::{Grpc, Outbound, from_i64, outbound, status, to_i64};
use crate::service::access::{Caller, Denied, Recheck};
use crate::service::watch::{self, CatchUp, Cursor, WatchRequest};
use crate::store::KvStore;
use crate::store::range::KeyRange;
use crate::store::watch::{Event, EventKind, Published};

/// Responses queued for a client before the stream's task waits for it.
const QUEUE: usize = 64;

struct Watcher {
    /// The range, the next revision to send and the filters ([`crate::service::watch`]).
    cursor: Cursor,
    progress_notify: bool,
    fragment: bool,
    /// Events were sent since the last progress notification.
    active: bool,
}

/// Why a stream's task ends.
struct Gone;

struct WatchStream {
    grpc: Grpc,
    store: Arc<KvStore>,
    watchers: BTreeMap<i64, Watcher>,
    /// Watchers ended by compaction whose cancel is still answered.
    compacted: std::collections::BTreeSet<i64>,
    next_id: i64,
    /// A progress request waits for every watcher to be synced.
    progress_wanted: bool,
    tx: mpsc::Sender<Result<rpc::WatchResponse, Status>>,
    /// Who opened the stream, bound to the credential it was opened with; each watcher's
    /// range is checked against it when created and whenever users or roles change.
    caller: Caller,
    /// Why the stream's credential no longer stands, once it does not: every watcher ended,
    /// and new ones are refused with this.
    revoked: Option<Denied>,
}

impl WatchStream {
    fn synced(&self, w: &Watcher) -> bool {
        w.cursor.synced(&self.store)
    }

    async fn send(&self, resp: rpc::WatchResponse) -> Result<(), Gone> {
        self.tx.send(Ok(resp)).await.map_err(|_| Gone)
    }

    fn response(&self, id: i64, revision: u64) -> rpc::WatchResponse {
        rpc::WatchResponse {
            header: self.grpc.header(revision),
            watch_id: id,
            ..Default::default()
        }
    }

    async fn create(&mut self, c: rpc::WatchCreateRequest) -> Result<(), Gone> {
        // Checked against the users and roles of now, not of when the stream opened.
        self.recheck().await?;
        // A new watcher is a new request: the stream's credential must be one a new request
        // would be accepted with (etcd's answer otherwise: created and canceled, id -1).
        let admitted = match &self.revoked {
            Some(denied) => Err(denied.clone()),
            None => self.caller.admit(&self.grpc.state.access),
        };
        if let Err(denied) = admitted {
            return self.refuse(-1, status::denied(denied).message()).await;
        }
        if empty_range(&c.key, &c.range_end) {
            return self.refuse(-1, "mvcc: watcher range is empty").await;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let revision = self.store.revision();
        if self.watchers.contains_key(&id) || id < 0 {
            let duplicate = "mvcc: duplicate watch ID provided on the WatchStream";
            return self.refuse(id, duplicate).await;
        }
        if c.watch_id == 0 {
            self.next_id += 1;
        }
        let filters: Vec<FilterType> = c
            .filters
            .iter()
            .filter_map(|f| FilterType::try_from(*f).ok())
            .collect();
        // etcd's first revision is -1 until the first compaction: a start below it is
        // compacted history (answered after `created`, below), -1 is the whole history.
        let compacted = self.store.meta().compact_revision;
        let start = match c.start_revision {
            0 => revision + 1,
            -1 if compacted == 0 => 1,
            start => from_i64(start),
        };
        let asked = WatchRequest {
            range: KeyRange::etcd(&c.key, &c.range_end),
            start: Some(start),
            prev_kv: c.prev_kv,
            no_put: filters.contains(&FilterType::Noput),
            no_delete: filters.contains(&FilterType::Nodelete),
        };
        let cursor = match self.grpc.state.watch(&self.caller, asked) {
            Ok(cursor) => cursor,
            Err(e) => return self.refuse(-1, Status::from(e).message()).await,
        };
        let watcher = Watcher {
            cursor,
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            active: false,
        };
        let mut created = self.response(id, revision);
        created.created = true;
        self.send(created).await?;
        if c.start_revision < 0 && start == 0 {
            let first = if compacted == 0 {
                -1
            } else {
                to_i64(compacted)
            };
            return self.compacted(id, first).await;
        }
        self.watchers.insert(id, watcher);
        Ok(())
    }

    /// etcd's refusal of a watch: created and canceled at once, with the reason.
    async fn refuse(&self, id: i64, reason: &str) -> Result<(), Gone> {
        let mut refused = self.response(id, self.store.revision());
        refused.created = true;
        refused.canceled = true;
        refused.cancel_reason = reason.to_string();
        self.send(refused).await
    }

    /// Ends watcher `id` because history it needs is compacted: etcd's answer carries the
    /// compact revision, no reason, and revision 0 in its header. A later cancel of the id is
    /// still answered, as etcd's.
    async fn compacted(&mut self, id: i64, compact_revision: i64) -> Result<(), Gone> {
        self.watchers.remove(&id);
        self.compacted.insert(id);
        let mut canceled = self.response(id, 0);
        canceled.canceled = true;
        canceled.compact_revision = compact_revision;
        self.send(canceled).await
    }

    /// With auth on: once users or roles change, the stream's credential is checked again
    /// ([`Caller::recheck`]). If it no longer stands every watcher is canceled with etcd's
    /// error for it; else every watcher's range is checked again, and those the caller may no
    /// longer read are canceled with "permission denied" (etcd checks only at creation).
    async fn recheck(&mut self) -> Result<(), Gone> {
        let reason = match self.caller.recheck(&self.grpc.state.access) {
            Recheck::Same => return Ok(()),
            Recheck::Refreshed(caller) => {
                self.caller = caller;
                None
            }
            Recheck::Revoked(denied) => {
                self.caller = Caller::Nobody;
                self.revoked = Some(denied.clone());
                Some(status::denied(denied).message().to_string())
            }
        };
        let refused: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| reason.is_some() || w.cursor.permitted(&self.caller).is_err())
            .map(|(id, _)| *id)
            .collect();
        let reason = reason.unwrap_or_else(|| "etcdserver: permission denied".into());
        for id in refused {
            self.watchers.remove(&id);
            let mut canceled = self.response(id, self.store.revision());
            canceled.canceled = true;
            canceled.cancel_reason = reason.clone();
            self.send(canceled).await?;
        }
        Ok(())
    }

    async fn cancel(&mut self, id: i64) -> Result<(), Gone> {
        if self.watchers.remove(&id).is_some() || self.compacted.remove(&id) {
            let mut canceled = self.response(id, self.store.revision());
            canceled.canceled = true;
            self.send(canceled).await?;
        }
        Ok(())
    }

    /// Sends `events` to watcher `id` at header revision `revision`, in parts no larger than
    /// the request limit if it asked for fragments.
    async fn send_events(&mut self, id: i64, events: &[&Event], revision: u64) -> Result<(), Gone> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(());
        };
        let (prev_kv, fragment) = (w.cursor.prev_kv, w.fragment);
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.event(e, prev_kv).await);
        }
        if out.is_empty() {
            return Ok(());
        }
        if let Some(w) = self.watchers.get_mut(&id) {
            w.active = true;
        }
        let limit = self.grpc.state.settings.max_request_bytes;
        if !fragment {
            let mut resp = self.response(id, revision);
            resp.events = out;
            return self.send(resp).await;
        }
        let mut part = Vec::new();
        let mut size = 0;
        let total = out.len();
        for (i, e) in out.into_iter().enumerate() {
            size += e.encoded_len();
            part.push(e);
            let last = i + 1 == total;
            if size >= limit || last {
                let mut resp = self.response(id, revision);
                resp.events = std::mem::take(&mut part);
                resp.fragment = !last;
                self.send(resp).await?;
                size = 0;
            }
        }
        Ok(())
    }

    async fn event(&self, e: &Event, prev_kv: bool) -> mvccpb::Event {
        let prev = match prev_kv {
            true => watch::prev_kv(&self.store, e).await.map(super::kv::kv),
            false => None,
        };
        let kv = match e.kind {
            EventKind::Put => super::kv::kv(e.kv.clone()),
            // A delete's kv is the key and the deletion's revision, as etcd's.
            EventKind::Delete => mvccpb::KeyValue {
                key: e.kv.key.clone(),
                mod_revision: to_i64(e.revision()),
                ..Default::default()
            },
        };
        mvccpb::Event {
            r#type: match e.kind {
                EventKind::Put => mvccpb::event::EventType::Put,
                EventKind::Delete => mvccpb::event::EventType::Delete,
            } as i32,
            kv: Some(kv),
            prev_kv: prev,
        }
    }

    /// Delivers one applied batch to every watcher it reaches.
    async fn deliver(&mut self, from: u64, revision: u64, events: &[Event]) -> Result<(), Gone> {
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            // A watcher this batch does not reach (it is behind) catches up from history.
            let Some(wanted) = w.cursor.deliver(from, revision, events) else {
                continue;
            };
            self.send_events(id, &wanted, revision).await?;
        }
        Ok(())
    }

    /// Reads history for every watcher behind the store until each has caught up.
    async fn catch_up(&mut self) -> Result<(), Gone> {
        let behind: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| !self.synced(w))
            .map(|(id, _)| *id)
            .collect();
        for id in behind {
            let store = self.store.clone();
            while let Some(w) = self
                .watchers
                .get_mut(&id)
                .filter(|w| !w.cursor.synced(&store))
            {
                let step = w.cursor.catch_up(&store).await;
                let canceled = match step {
                    Ok(CatchUp::Events { events, revision }) => {
                        let wanted: Vec<&Event> = events.iter().collect();
                        self.send_events(id, &wanted, revision).await?;
                        continue;
                    }
                    Ok(CatchUp::Compacted { compact_revision }) => {
                        self.compacted(id, to_i64(compact_revision)).await?;
                        break;
                    }
                    Err(e) => {
                        let mut canceled = self.response(id, self.store.revision());
                        canceled.cancel_reason = Status::from(e).message().to_string();
                        canceled
                    }
                };
                self.watchers.remove(&id);
                self.send(rpc::WatchResponse {
                    canceled: true,
                    ..canceled
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Answers a waiting progress request once every watcher is synced: every event up to
    /// the revision answered has been sent on this stream.
    async fn answer_progress(&mut self) -> Result<(), Gone> {
        if !self.progress_wanted || self.watchers.values().any(|w| !self.synced(w)) {
            return Ok(());
        }
        self.progress_wanted = false;
        let revision = self
            .watchers
            .values()
            .map(|w| w.cursor.next - 1)
            .min()
            .unwrap_or_else(|| self.store.revision());
        self.send(self.response(-1, revision)).await
    }

    /// Progress notifications for quiet, synced watchers that asked for them.
    async fn notify_progress(&mut self) -> Result<(), Gone> {
        let due: Vec<(i64, u64)> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.active && self.synced(w))
            .map(|(id, w)| (*id, w.cursor.next - 1))
            .collect();
        for w in self.watchers.values_mut() {
            w.active = false;
        }
        for (id, revision) in due {
            self.send(self.response(id, revision)).await?;
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut inbound: Streaming<rpc::WatchRequest>,
        mut rx: broadcast::Receiver<Published>,
    ) -> Result<(), Gone> {
        let every = self.grpc.state.settings.watch_progress_notify;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closing = self.grpc.state.closing.clone();
        loop {
            self.recheck().await?;
            self.catch_up().await?;
            self.answer_progress().await?;
            tokio::select! {
                req = inbound.next() => match req {
                    Some(Ok(req)) => match req.request_union {
                        Some(watch_request::RequestUnion::CreateRequest(c)) => self.create(c).await?,
                        Some(watch_request::RequestUnion::CancelRequest(c)) => {
                            self.cancel(c.watch_id).await?;
                        }
                        Some(watch_request::RequestUnion::ProgressRequest(_)) => {
                            self.progress_wanted = true;
                        }
                        None => {}
                    },
                    Some(Err(_)) | None => return Err(Gone),
                },
                msg = rx.recv() => match msg {
                    Ok(Published::Changes(batch)) => {
                        self.recheck().await?;
                        self.deliver(batch.from, batch.revision, &batch.events).await?;
                    }
                    // A lag, or a restored snapshot: history has what came since.
                    Ok(Published::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return Err(Gone),
                },
                _ = ticker.tick() => self.notify_progress().await?,
                () = self.tx.closed() => return Err(Gone),
                () = crate::api::stopping(&mut closing) => return Err(Gone),
            }
        }
    }
}

#[tonic::async_trait]
impl rpc::watch_server::Watch for Grpc {
    type WatchStream = Outbound<rpc::WatchResponse>;

    async fn watch(
        &self,
        request: Request<Streaming<rpc::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.state.node.check_running()?;
        let caller = self.caller(&request).await?;
        let store = self.state.engine.clone();
        // Subscribed before any watcher is created: nothing applied after is missed.
        let rx = store.hub().subscribe();
        let (tx, out) = mpsc::channel(QUEUE);
        let stream = WatchStream {
            grpc: self.clone(),
            store,
            watchers: BTreeMap::new(),
            compacted: Default::default(),
            next_id: 0,
            progress_wanted: false,
            tx,
            caller,
            revoked: None,
        };
        tokio::spawn(stream.run(request.into_inner(), rx));
        Ok(Response::new(outbound(out)))
    }
}

/// etcd's empty watch range: a range end (other than "\0", every key from the key on) at or
/// below the key (an empty key is "\0").
fn empty_range(key: &[u8], range_end: &[u8]) -> bool {
    let key = if key.is_empty() { &[0u8][..] } else { key };
    !range_end.is_empty() && range_end != [0] && key >= range_end
}
