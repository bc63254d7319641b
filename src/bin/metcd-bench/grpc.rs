//! The `grpc` target: etcd's v3 gRPC API, spoken the same way to metcd and to etcd (the client
//! code is generated from metcd's copy of etcd's protos). `--conns` HTTP/2 connections per
//! endpoint; the clients share them, many requests in flight on each, as etcd's own clients do.
//! An https:// endpoint's connections are dialled by [`tls::Dialer`] (ALPN `h2`).

use std::time::Instant;

use metcd::api::grpc::pb::etcdserverpb as rpc;
use rpc::kv_client::KvClient;
use rpc::lease_client::LeaseClient;
use rpc::watch_client::WatchClient;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use super::{Args, Consistency, Job, error_text, tls, with_causes};

/// Opens `conns` connections to `authority`, over TLS when `tls` is given.
pub async fn connect(
    authority: &str,
    tls: Option<&tls::Dialer>,
    conns: usize,
) -> Result<Vec<Channel>, String> {
    // Always an http:// URI: were it https://, a tonic built with a TLS feature (as under
    // `cargo test`) would add its own TLS on top of ours. The origin says https to the server.
    let mut endpoint = Channel::from_shared(format!("http://{authority}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true);
    if tls.is_some() {
        let origin: Uri = format!("https://{authority}")
            .parse()
            .map_err(|e| format!("endpoint {authority:?}: {e}"))?;
        endpoint = endpoint.origin(origin);
    }
    let mut out = Vec::with_capacity(conns);
    for _ in 0..conns.max(1) {
        let channel = match tls {
            None => endpoint.connect().await,
            Some(tls) => connect_tls(&endpoint, authority, tls.clone()).await,
        };
        out.push(channel.map_err(|e| format!("connect {authority}: {}", error_text(&e)))?);
    }
    Ok(out)
}

/// One channel whose connections (and reconnections) `tls` dials.
async fn connect_tls(
    endpoint: &Endpoint,
    authority: &str,
    tls: tls::Dialer,
) -> Result<Channel, tonic::transport::Error> {
    let authority = authority.to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, authority) = (tls.clone(), authority.clone());
        async move { tls.h2(&authority).await }
    });
    endpoint.connect_with_connector(connector).await
}

/// A failed call: its code and message, and what caused it (tonic's "transport error" alone
/// hides a refused client certificate, say).
fn status(e: tonic::Status) -> String {
    let text = format!("{:?}: {}", e.code(), e.message());
    with_causes(text, std::error::Error::source(&e))
}

/// Does one job over `channel`.
pub async fn send(args: &Args, channel: &Channel, job: &Job) -> Result<(), String> {
    match job {
        Job::Put(key, value) => {
            let req = rpc::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.clone(),
                ..Default::default()
            };
            KvClient::new(channel.clone())
                .put(req)
                .await
                .map_err(status)?;
        }
        Job::Get(key) => {
            let req = rpc::RangeRequest {
                key: key.as_bytes().to_vec(),
                serializable: args.consistency == Consistency::S,
                ..Default::default()
            };
            KvClient::new(channel.clone())
                .range(req)
                .await
                .map_err(status)?;
        }
        Job::Grant => {
            grant(args, channel).await?;
        }
        Job::KeepAlive(id) => {
            // One request on a keepalive stream, as a client renewing once.
            let req = rpc::LeaseKeepAliveRequest { id: *id as i64 };
            let mut answers = LeaseClient::new(channel.clone())
                .lease_keep_alive(futures_util::stream::iter([req]))
                .await
                .map_err(status)?
                .into_inner();
            let answer = answers.message().await.map_err(status)?;
            if answer.is_none_or(|a| a.ttl <= 0) {
                return Err(format!("lease {id} not renewed"));
            }
        }
    }
    Ok(())
}

/// Grants a lease of `--lease-ttl` seconds; its id.
pub async fn grant(args: &Args, channel: &Channel) -> Result<u64, String> {
    let req = rpc::LeaseGrantRequest {
        ttl: args.lease_ttl as i64,
        id: 0,
    };
    let resp = LeaseClient::new(channel.clone())
        .lease_grant(req)
        .await
        .map_err(status)?;
    Ok(resp.into_inner().id as u64)
}

/// A watch stream on `[prefix, end)`, open once its created response arrived. The request
/// side stays open as long as the returned sender lives.
pub async fn watch(
    channel: &Channel,
    prefix: &[u8],
    end: &[u8],
) -> Result<
    (
        tokio::sync::mpsc::Sender<rpc::WatchRequest>,
        tonic::Streaming<rpc::WatchResponse>,
    ),
    String,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = rpc::WatchRequest {
        request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(
            rpc::WatchCreateRequest {
                key: prefix.to_vec(),
                range_end: end.to_vec(),
                ..Default::default()
            },
        )),
    };
    tx.send(create).await.map_err(|e| e.to_string())?;
    let requests =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let mut stream = WatchClient::new(channel.clone())
        .watch(requests)
        .await
        .map_err(status)?
        .into_inner();
    let started = Instant::now();
    loop {
        match stream.message().await {
            Ok(Some(r)) if r.created => return Ok((tx, stream)),
            Ok(Some(_)) => {}
            Ok(None) => return Err("the stream ended before it was created".into()),
            Err(e) => return Err(format!("{} after {:?}", status(e), started.elapsed())),
        }
    }
}
