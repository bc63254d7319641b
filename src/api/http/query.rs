//! Query parameters of key requests.

use percent_encoding::percent_decode_str;

use super::error::ApiError;
use crate::service::kv::Barrier;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Consistency {
    Linearizable,
    Serializable,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Encoding {
    /// Keys and values as JSON strings; an item that is not UTF-8 falls back to base64 fields.
    Utf8,
    Base64,
}

#[derive(Debug)]
pub struct Query {
    pub consistency: Consistency,
    /// `prefix=true`: list the keys that start with the path's key.
    pub prefix: bool,
    /// `end=<key>`: list keys in `[key, end)`; an empty `end` means to the last key.
    pub end: Option<Vec<u8>>,
    pub limit: Option<usize>,
    pub encoding: Encoding,
    /// `min_revision=N`: wait (bounded) until this member has applied store revision N, then
    /// read locally, without a round to the leader.
    pub min_revision: Option<u64>,
    /// `revision=N`: read the store as of revision N (history, until compacted).
    pub revision: Option<u64>,
    /// `watch=true`: stream changes instead of reading ([`super::watch`]).
    pub watch: bool,
    /// `start_revision=N`: the first revision a watch reports (default: the next one).
    pub start_revision: Option<u64>,
    /// `prev_kv=true`: watch events carry the key's previous value.
    pub prev_kv: bool,
    /// `progress_ms=N`: a watch sends a progress line every N ms.
    pub progress_ms: Option<u64>,
    /// `no_put` / `no_delete`: a watch leaves out those events.
    pub no_put: bool,
    pub no_delete: bool,
    /// `lease=ID`: a PUT attaches the key to this lease.
    pub lease: Option<u64>,
    /// `rev=N`: an election leader key's create revision (proclaim, resign).
    pub rev: Option<u64>,
}

impl Query {
    /// The read barrier asked for: `min_revision=`, else the consistency.
    pub fn barrier(&self) -> Barrier {
        match (self.min_revision, self.consistency) {
            (Some(rev), _) => Barrier::MinRevision(rev),
            (None, Consistency::Linearizable) => Barrier::Linearizable,
            (None, Consistency::Serializable) => Barrier::Serializable,
        }
    }

    pub fn is_range(&self) -> bool {
        self.prefix || self.end.is_some()
    }

    pub fn parse(query: Option<&str>) -> Result<Query, ApiError> {
        let mut q = Query {
            consistency: Consistency::Linearizable,
            prefix: false,
            end: None,
            limit: None,
            encoding: Encoding::Utf8,
            min_revision: None,
            revision: None,
            watch: false,
            start_revision: None,
            prev_kv: false,
            progress_ms: None,
            no_put: false,
            no_delete: false,
            lease: None,
            rev: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            q.set(name, value)?;
        }
        if q.prefix && q.end.is_some() {
            return Err(ApiError::BadRequest(
                "use either prefix=true or end=, not both".into(),
            ));
        }
        Ok(q)
    }

    /// Applies one `name=value` pair; unknown names are ignored, as etcd's HTTP APIs do.
    fn set(&mut self, name: &str, value: &str) -> Result<(), ApiError> {
        let bad = |want: &str| {
            ApiError::BadRequest(format!("query parameter {name}={value:?}: expected {want}"))
        };
        match name {
            "consistency" => {
                self.consistency = match value {
                    "linearizable" | "l" => Consistency::Linearizable,
                    "serializable" | "s" => Consistency::Serializable,
                    _ => return Err(bad("linearizable or serializable")),
                }
            }
            "prefix" => self.prefix = boolean(value).ok_or_else(|| bad("true or false"))?,
            "watch" => self.watch = boolean(value).ok_or_else(|| bad("true or false"))?,
            "prev_kv" => self.prev_kv = boolean(value).ok_or_else(|| bad("true or false"))?,
            "no_put" => self.no_put = boolean(value).ok_or_else(|| bad("true or false"))?,
            "no_delete" => self.no_delete = boolean(value).ok_or_else(|| bad("true or false"))?,
            "start_revision" => match value.parse::<u64>() {
                Ok(n) if n > 0 => self.start_revision = Some(n),
                _ => return Err(bad("a revision number (1 or more)")),
            },
            "lease" => match value.parse::<u64>() {
                Ok(n) if n > 0 => self.lease = Some(n),
                _ => return Err(bad("a lease id (1 or more)")),
            },
            "progress_ms" => match value.parse::<u64>() {
                Ok(n) if (10..=3_600_000).contains(&n) => self.progress_ms = Some(n),
                _ => return Err(bad("a number of milliseconds from 10 to 3600000")),
            },
            "end" => self.end = Some(percent_decode_str(value).collect()),
            "limit" => match value.parse::<usize>() {
                Ok(n) if n > 0 => self.limit = Some(n),
                _ => return Err(bad("a positive number")),
            },
            "encoding" => {
                self.encoding = match value {
                    "utf8" | "text" => Encoding::Utf8,
                    "base64" => Encoding::Base64,
                    _ => return Err(bad("utf8 or base64")),
                }
            }
            "min_revision" => {
                let rev = value.parse().map_err(|_| bad("a revision number"))?;
                self.min_revision = Some(rev);
            }
            "rev" => match value.parse::<u64>() {
                Ok(n) if n > 0 => self.rev = Some(n),
                _ => return Err(bad("a create revision (1 or more)")),
            },
            "revision" => match value.parse::<u64>() {
                Ok(n) if n > 0 => self.revision = Some(n),
                _ => return Err(bad("a revision number (1 or more)")),
            },
            _ => {}
        }
        Ok(())
    }
}

fn boolean(value: &str) -> Option<bool> {
    match value {
        "true" | "1" | "" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let q = Query::parse(Some(
            "consistency=s&prefix=true&limit=5&encoding=base64&x=y&min_revision=7",
        ))
        .unwrap();
        assert_eq!(
            (q.consistency, q.prefix, q.limit, q.encoding, q.min_revision),
            (
                Consistency::Serializable,
                true,
                Some(5),
                Encoding::Base64,
                Some(7)
            )
        );
        assert_eq!(
            Query::parse(Some("end=a%2Fz")).unwrap().end,
            Some(b"a/z".to_vec())
        );
        for bad in [
            "consistency=x",
            "limit=0",
            "limit=-1",
            "prefix=maybe",
            "encoding=hex",
            "prefix=true&end=b",
            "min_revision=x",
            "min_revision=-1",
            "revision=0",
            "revision=x",
            "watch=maybe",
            "start_revision=0",
            "progress_ms=5",
            "progress_ms=x",
            "no_put=2",
            "lease=0",
            "lease=x",
        ] {
            assert!(Query::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_query_string_parses_or_is_refused(q in ".{0,80}") {
            let _ = Query::parse(Some(&q));
        }
    }
}
