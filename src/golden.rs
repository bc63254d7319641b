//! Golden bytes: the binary formats this release writes (log entries, snapshots), frozen in
//! files under `tests/fixtures/formats/` that an earlier build made. Every later build must
//! decode them to the same values, because a log, a data dir or a snapshot outlives the
//! binary that wrote it. A fixture is never rewritten: a new form gets a new fixture
//! (`METCD_NEW_FIXTURES=1 cargo test --lib golden` writes the ones that are missing; commit
//! them), and a changed encoding fails here until it is given a new format version.

use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(name)
}

/// The committed bytes of fixture `name`; with `METCD_NEW_FIXTURES=1`, a missing fixture is
/// first written from `make()`.
pub fn fixture(name: &str, make: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    let path = path(name);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(_) if std::env::var_os("METCD_NEW_FIXTURES").is_some() => {
            let bytes = make();
            std::fs::write(&path, &bytes).expect("write a new fixture");
            bytes
        }
        Err(e) => panic!(
            "fixture {} is missing ({e}): a new format form needs one \
             (METCD_NEW_FIXTURES=1 writes it; commit it)",
            path.display()
        ),
    }
}

/// A fixture of named byte strings, one `name hex` line each (log entries, small records).
pub fn named(name: &str, make: impl FnOnce() -> Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let text = fixture(name, || {
        make()
            .into_iter()
            .map(|(n, b)| format!("{n} {}\n", hex(&b)))
            .collect::<String>()
            .into_bytes()
    });
    String::from_utf8(text)
        .expect("a named fixture is text")
        .lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').expect("a `name hex` line");
            (n.to_string(), unhex(h))
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
