//! A range of keys: the one form used by reads, deletes, transactions, watches and
//! permissions. Protocols spell ranges their own way; each has a named constructor here.

/// `[start, end)` of keys: `end = None` is the single key `start`; `Some(empty)` is every key
/// from `start` to the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// The single key `key`.
    pub fn key(key: Vec<u8>) -> Self {
        KeyRange {
            start: key,
            end: None,
        }
    }

    /// Every key that starts with `prefix` (every key, for an empty prefix or one of 0xff
    /// bytes only).
    pub fn prefix(prefix: Vec<u8>) -> Self {
        let end = prefix_end(&prefix).unwrap_or_default();
        KeyRange {
            start: prefix,
            end: Some(end),
        }
    }

    /// Every key from `start` on.
    pub fn from_key(start: Vec<u8>) -> Self {
        KeyRange {
            start,
            end: Some(Vec::new()),
        }
    }

    /// `[start, end)`; `end = None` is to the last key.
    pub fn between(start: Vec<u8>, end: Option<Vec<u8>>) -> Self {
        KeyRange {
            start,
            end: Some(end.unwrap_or_default()),
        }
    }

    /// etcd's form: an empty `range_end` is the key alone, `"\0"` every key from `key` on.
    pub fn etcd(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            [] => None,
            [0] => Some(Vec::new()),
            end => Some(end.to_vec()),
        };
        KeyRange {
            start: key.to_vec(),
            end,
        }
    }

    /// The `range_end` of etcd's form (what permissions are written in).
    pub fn etcd_end(&self) -> &[u8] {
        match &self.end {
            None => &[],
            Some(e) if e.is_empty() => &[0],
            Some(e) => e,
        }
    }

    /// The longer of its bounds, in bytes (what a key-size limit applies to).
    pub fn longest_bound(&self) -> usize {
        self.start.len().max(self.end.as_ref().map_or(0, Vec::len))
    }

    pub fn is_single_key(&self) -> bool {
        self.end.is_none()
    }

    /// `[start, end)` as the store takes it (`None` end: to the last key).
    pub fn bounds(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match &self.end {
            None => {
                let mut end = self.start.clone();
                end.push(0);
                (self.start.clone(), Some(end))
            }
            Some(e) if e.is_empty() => (self.start.clone(), None),
            Some(e) => (self.start.clone(), Some(e.clone())),
        }
    }

    /// Whether `key` is in the range (no allocation: a watcher asks for every event).
    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(e) => key >= self.start.as_slice() && (e.is_empty() || key < e.as_slice()),
        }
    }
}

/// The first key after every key with this prefix (`None`: no such key, the range goes to
/// the last key).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_skips_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn forms_agree() {
        let k = |s: &str| s.as_bytes().to_vec();
        assert_eq!(KeyRange::etcd(b"a", b""), KeyRange::key(k("a")));
        assert_eq!(KeyRange::etcd(b"a", b"\0"), KeyRange::from_key(k("a")));
        assert_eq!(KeyRange::etcd(b"a/", b"a0"), KeyRange::prefix(k("a/")));
        for r in [
            KeyRange::key(k("a")),
            KeyRange::from_key(k("a")),
            KeyRange::prefix(k("a/")),
        ] {
            assert_eq!(KeyRange::etcd(&r.start, r.etcd_end()), r);
            let (start, end) = r.bounds();
            for key in ["", "a", "a\0", "a/", "a/x", "a0", "b"] {
                let inside = key.as_bytes() >= start.as_slice()
                    && end.as_ref().is_none_or(|e| key.as_bytes() < e.as_slice());
                assert_eq!(r.contains(key.as_bytes()), inside, "{r:?} {key:?}");
            }
        }
        assert!(KeyRange::prefix(Vec::new()).contains(b"anything"));
    }
}
