//! `POST /_txn`: etcd's Txn in JSON. All writes of a transaction share one revision and are
//! applied atomically, in log order, on every member.
//!
//! ```json
//! {"compare": [{"key": "k", "target": "value", "result": "==", "value": "v"},
//!              {"key": "p/", "prefix": true, "target": "mod", "result": "<", "mod_revision": 9}],
//!  "success": [{"put": {"key": "k", "value": "w", "lease": 0}},
//!              {"delete": {"key": "p/", "prefix": true}},
//!              {"get": {"key": "k", "limit": 10, "revision": 0}}],
//!  "failure": [{"get": {"key": "k"}}]}
//! ```
//! - compare targets: `value` (operand `value`), `version` (`version`), `create` (`create_revision`),
//!   `mod` (`mod_revision`), `lease` (`lease`); results `==`, `!=`, `<`, `>`. A compare on a
//!   range (`prefix` or `range_end`) holds if it holds for every key in it.
//! - keys, values and range ends are strings, or base64 in `key_base64`, `value_base64`,
//!   `range_end_base64`; with `?encoding=base64` the plain fields are base64 too, and so are
//!   the answer's (the listing convention).
//! - answer: `{"succeeded", "revision", "responses": [{"put": {"revision"}} | {"delete":
//!   {"deleted"}} | {"get": {"count", "more", "kvs"}}]}`. A get without `limit` returns at most
//!   10,000 keys (`more` says if there were more).
//! - 400 for malformed input, a key written twice ("duplicate key given in txn request"), more
//!   than 128 operations in a list, or a get at a future revision; 410 for a get at a
//!   compacted revision (the whole transaction is refused, nothing written).

use axum::Json;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::Service;
use super::error::ApiError;
use super::query::{Encoding, Query};
use super::range::{DEFAULT_LIMIT, to_json};
use crate::store::range::KeyRange;
use crate::store::range::prefix_end;
use crate::store::txn::{CmpResult, Compare, Target, Txn, TxnOp, TxnResponse};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnRequest {
    #[serde(default)]
    compare: Vec<CompareJson>,
    #[serde(default)]
    success: Vec<OpJson>,
    #[serde(default)]
    failure: Vec<OpJson>,
}

/// A key or range as JSON gives it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RangeJson {
    key: Option<String>,
    key_base64: Option<String>,
    #[serde(default)]
    prefix: bool,
    range_end: Option<String>,
    range_end_base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareJson {
    #[serde(flatten)]
    range: RangeJson,
    target: String,
    result: String,
    value: Option<String>,
    value_base64: Option<String>,
    version: Option<u64>,
    create_revision: Option<u64>,
    mod_revision: Option<u64>,
    lease: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum OpJson {
    Put {
        key: Option<String>,
        key_base64: Option<String>,
        value: Option<String>,
        value_base64: Option<String>,
        #[serde(default)]
        lease: u64,
    },
    Delete(RangeJson),
    Get {
        #[serde(flatten)]
        range: RangeJson,
        limit: Option<u64>,
        #[serde(default)]
        revision: u64,
    },
}

/// Decodes one field given as text or base64 (at most one of the two).
fn bytes(
    name: &str,
    text: Option<&String>,
    b64: Option<&String>,
    encoding: Encoding,
) -> Result<Option<Vec<u8>>, ApiError> {
    let decode = |what: &str, s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| ApiError::BadRequest(format!("{what} is not base64: {e}")))
    };
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(format!(
            "give {name} or {name}_base64, not both"
        ))),
        (Some(t), None) if encoding == Encoding::Base64 => decode(name, t).map(Some),
        (Some(t), None) => Ok(Some(t.clone().into_bytes())),
        (None, Some(b)) => decode(&format!("{name}_base64"), b).map(Some),
        (None, None) => Ok(None),
    }
}

fn required(name: &str, v: Option<Vec<u8>>) -> Result<Vec<u8>, ApiError> {
    v.ok_or_else(|| ApiError::BadRequest(format!("{name} is required")))
}

impl RangeJson {
    fn parse(&self, encoding: Encoding) -> Result<KeyRange, ApiError> {
        let start = required(
            "key",
            bytes("key", self.key.as_ref(), self.key_base64.as_ref(), encoding)?,
        )?;
        let end = bytes(
            "range_end",
            self.range_end.as_ref(),
            self.range_end_base64.as_ref(),
            encoding,
        )?;
        let end = match (self.prefix, end) {
            (true, Some(_)) => {
                return Err(ApiError::BadRequest(
                    "use either prefix or range_end, not both".into(),
                ));
            }
            (true, None) => Some(prefix_end(&start).unwrap_or_default()),
            (false, end) => end,
        };
        Ok(KeyRange { start, end })
    }
}

impl CompareJson {
    fn parse(&self, encoding: Encoding) -> Result<Compare, ApiError> {
        let range = self.range.parse(encoding)?;
        let operand = |name: &str, v: Option<u64>| {
            v.ok_or_else(|| ApiError::BadRequest(format!("a {} compare needs {name}", self.target)))
        };
        let target = match self.target.as_str() {
            "value" => Target::Value(required(
                "value",
                bytes(
                    "value",
                    self.value.as_ref(),
                    self.value_base64.as_ref(),
                    encoding,
                )?,
            )?),
            "version" => Target::Version(operand("version", self.version)?),
            "create" => Target::Create(operand("create_revision", self.create_revision)?),
            "mod" => Target::Mod(operand("mod_revision", self.mod_revision)?),
            "lease" => Target::Lease(operand("lease", self.lease)?),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "compare target {other:?}: expected value, version, create, mod or lease"
                )));
            }
        };
        let result = match self.result.as_str() {
            "==" => CmpResult::Equal,
            "!=" => CmpResult::NotEqual,
            "<" => CmpResult::Less,
            ">" => CmpResult::Greater,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "compare result {other:?}: expected ==, !=, < or >"
                )));
            }
        };
        Ok(Compare {
            range,
            target,
            result,
        })
    }
}

impl OpJson {
    fn parse(&self, encoding: Encoding) -> Result<TxnOp, ApiError> {
        Ok(match self {
            OpJson::Put {
                key,
                key_base64,
                value,
                value_base64,
                lease,
            } => {
                let key = required(
                    "key",
                    bytes("key", key.as_ref(), key_base64.as_ref(), encoding)?,
                )?;
                if key.is_empty() {
                    return Err(ApiError::BadRequest("put: empty key".into()));
                }
                let value = bytes("value", value.as_ref(), value_base64.as_ref(), encoding)?;
                TxnOp::put(key, value.unwrap_or_default(), *lease)
            }
            OpJson::Delete(range) => TxnOp::delete(range.parse(encoding)?),
            OpJson::Get {
                range,
                limit,
                revision,
            } => TxnOp::Get {
                range: range.parse(encoding)?,
                limit: limit.unwrap_or(DEFAULT_LIMIT as u64),
                revision: *revision,
            },
        })
    }
}

fn parse(body: &[u8], encoding: Encoding) -> Result<Txn, ApiError> {
    let req: TxnRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed transaction: {e}")))?;
    let txn = Txn {
        compare: req
            .compare
            .iter()
            .map(|c| c.parse(encoding))
            .collect::<Result<_, _>>()?,
        success: req
            .success
            .iter()
            .map(|o| o.parse(encoding))
            .collect::<Result<_, _>>()?,
        failure: req
            .failure
            .iter()
            .map(|o| o.parse(encoding))
            .collect::<Result<_, _>>()?,
    };
    Ok(txn)
}

pub async fn handle(
    State(state): State<std::sync::Arc<Service>>,
    axum::Extension(caller): axum::Extension<crate::service::access::Caller>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let query = Query::parse(query.as_deref())?;
    let body = super::body::read_value(body, state.settings.max_request_bytes).await?;
    let txn = parse(&body, query.encoding)?;
    let done = state.txn(&caller, txn).await?;
    let revision = done.revision;
    let responses: Vec<Value> = done
        .result
        .responses
        .into_iter()
        .map(|r| match r {
            TxnResponse::Put { .. } => json!({ "put": { "revision": revision } }),
            TxnResponse::Delete { deleted, .. } => json!({ "delete": { "deleted": deleted } }),
            // JSON transactions have no nested form.
            TxnResponse::Txn(_) => json!({}),
            TxnResponse::Get { kvs, more, .. } => {
                let items: Vec<Value> = kvs
                    .into_iter()
                    .map(|kv| to_json(kv, query.encoding))
                    .collect();
                json!({ "get": { "count": items.len(), "more": more, "kvs": items } })
            }
        })
        .collect();
    let body =
        json!({ "succeeded": done.result.succeeded, "revision": revision, "responses": responses });
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        super::headers::REVISION_HEADER,
        super::headers::header_value(&revision.to_string()),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etcd_style_json_and_refuses_the_rest() {
        let body = br#"{"compare":[{"key":"k","target":"value","result":"==","value":"v"},
            {"key":"p/","prefix":true,"target":"mod","result":"<","mod_revision":9}],
            "success":[{"put":{"key":"k","value":"w","lease":7}},{"delete":{"key":"p/","prefix":true}},
            {"get":{"key_base64":"AP8=","limit":2,"revision":3}}],
            "failure":[{"get":{"key":"a","range_end":""}}]}"#;
        let t = parse(body, Encoding::Utf8).unwrap();
        assert_eq!(t.compare[1].range.end, Some(b"p0".to_vec()));
        assert_eq!(t.compare[1].target, Target::Mod(9));
        assert_eq!(
            t.success[2],
            TxnOp::Get {
                range: KeyRange {
                    start: vec![0, 255],
                    end: None
                },
                limit: 2,
                revision: 3
            }
        );
        assert_eq!(
            t.failure[0],
            TxnOp::Get {
                range: KeyRange {
                    start: b"a".to_vec(),
                    end: Some(vec![])
                },
                limit: DEFAULT_LIMIT as u64,
                revision: 0
            }
        );
        let b64 = parse(
            br#"{"success":[{"put":{"key":"aw==","value":"dg=="}}]}"#,
            Encoding::Base64,
        )
        .unwrap();
        assert_eq!(
            b64.success[0],
            TxnOp::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                lease: 0,
                options: Default::default(),
            }
        );
        for bad in [
            &br#"{"compare":[{"key":"k","target":"size","result":"=="}]}"#[..],
            br#"{"compare":[{"key":"k","target":"version","result":"=>","version":1}]}"#,
            br#"{"compare":[{"key":"k","target":"version","result":"=="}]}"#,
            br#"{"success":[{"put":{"value":"v"}}]}"#,
            br#"{"success":[{"put":{"key":""}}]}"#,
            br#"{"success":[{"put":{"key":"k","key_base64":"aw=="}}]}"#,
            br#"{"success":[{"put":{"key_base64":"!"}}]}"#,
            br#"{"success":[{"delete":{"key":"k","prefix":true,"range_end":"z"}}]}"#,
            br#"{"success":[{"watch":{"key":"k"}}]}"#,
            br#"{"succes":[]}"#,
            b"[1,2]",
            b"",
        ] {
            assert!(
                parse(bad, Encoding::Utf8).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_body_parses_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse(&body, Encoding::Utf8);
        }
    }
}
