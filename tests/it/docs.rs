//! The configuration reference, docs/configuration.md, is what `metcd --help` and its
//! subcommands' `--help` print: this test fails when the two differ. To regenerate it after
//! changing a flag: `METCD_UPDATE_DOCS=1 cargo test --test it docs::`.

use std::path::Path;
use std::process::Command;

use crate::common::BIN;

const MARKER: &str = "<!-- generated from metcd --help: do not edit below -->";
/// The commands whose help makes up the reference, in order.
const COMMANDS: [&[&str]; 3] = [
    &["--help"],
    &["local-cluster", "--help"],
    &["snapshot", "restore", "--help"],
];

fn generated() -> String {
    let mut out = String::new();
    for args in COMMANDS {
        let run = Command::new(BIN).args(args).output().expect("run metcd");
        assert!(run.status.success(), "metcd {args:?} failed");
        let help = String::from_utf8(run.stdout).expect("help is UTF-8");
        out.push_str(&format!(
            "\n## `metcd {}`\n\n```text\n{}\n```\n",
            args.join(" "),
            help.trim_end()
        ));
    }
    out
}

#[test]
fn configuration_reference_is_metcd_help() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let (head, tail) = doc
        .split_once(MARKER)
        .expect("docs/configuration.md keeps its generated-part marker");
    let want = generated();
    if std::env::var_os("METCD_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{head}{MARKER}\n{want}")).expect("write the reference");
        return;
    }
    assert!(
        tail.trim() == want.trim(),
        "docs/configuration.md is out of date with `metcd --help`; regenerate it with \
         METCD_UPDATE_DOCS=1 cargo test --test it docs::"
    );
}
