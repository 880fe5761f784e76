//! The library is one stack of modules, each importing only from the layers below it (the crate
//! doc and the README's Architecture section draw it):
//!
//! ```text
//! protocol                         wire types, codec, ids; no I/O beyond frames
//! metrics · net · tls · auth       leaf services (protocol at most)
//! policy                           pure decisions
//! room                             the room core (sans-IO state machine) + the broadcast ring
//! store                            the durable store behind its trait
//! config                           configuration, one documented place per key
//! server                           the shell: Relay feeds the core, QUIC/WebTransport/WebSocket
//! admin                            the HTTP admin API
//! node                             one relay process: store + relay + listeners + admin
//! bench                            the load harness (cargo feature `bench`)
//! ```
//!
//! `client` stands beside the stack: it imports only `protocol`, `tls` and `net`, and only
//! `bench` (and the binary) import it. This test reads every `crate::…` path (and every `super::`
//! that leaves a top-level module) in every file under `src/`, outside comments and strings, and
//! fails on an edge that goes up, sideways, or into `client`. Its own unit tests feed it sources
//! with such edges, so it is known to catch them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may import from strictly lower layers only.
const LAYERS: &[&[&str]] = &[
    &["protocol"],
    &["metrics", "net", "tls", "auth"],
    &["policy"],
    &["room"],
    &["store"],
    &["config"],
    &["server"],
    &["admin"],
    &["node"],
    &["bench"],
];

/// Beside the stack: a module, what it may import, and who may import it.
const SIDE: &[(&str, &[&str], &[&str])] = &[("client", &["protocol", "tls", "net"], &["bench"])];

/// The binary's own modules (`src/main.rs`, `src/chat.rs`, `src/cli/`): they sit on top and use the library
/// through `roomcast::`, so they are not checked here.
const BINARY: &[&str] = &["main", "cli", "chat"];

/// Files of the room core: no clock, socket, task, lock, channel or runtime type may appear.
const CORE_DIR: &str = "room/core";
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "quinn",
    "flume",
    "std::sync",
    "std::time",
    "std::thread",
    "std::net",
    "std::fs",
    "std::io",
    "SystemTime",
    "Instant",
    "Mutex",
    "RwLock",
    "Atomic",
    "async",
    "await",
    "spawn",
    "metrics::",
    "tracing",
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Why `from` may not import `to`, if it may not.
fn forbidden(from: &str, to: &str) -> Option<String> {
    if from == to {
        return None;
    }
    if let Some((_, may, _)) = SIDE.iter().find(|(m, _, _)| *m == from) {
        return (!may.contains(&to))
            .then(|| format!("`{from}` may import only {may:?}, not `{to}`"));
    }
    if let Some((_, _, users)) = SIDE.iter().find(|(m, _, _)| *m == to) {
        return (!users.contains(&from))
            .then(|| format!("only {users:?} may import `{to}`, not `{from}`"));
    }
    match (layer_of(from), layer_of(to)) {
        (Some(f), Some(t)) if t < f => None,
        (Some(f), Some(t)) => Some(format!(
            "`{from}` (layer {f}) imports `{to}` (layer {t}): an import must go down the stack"
        )),
        (None, _) => Some(format!("module `{from}` has no place in the stack")),
        (_, None) => Some(format!("module `{to}` has no place in the stack")),
    }
}

/// `src` with comments, strings and character literals blanked out (lifetimes kept).
fn code_only(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            continue;
        }
        if c == 'r' && (next == Some('"') || next == Some('#')) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) == Some(&'"') {
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
                continue;
            }
        }
        if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
            continue;
        }
        if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'); anything else is a lifetime.
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
                continue;
            }
            if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier at `s[i..]` after whitespace, and where it ends.
fn ident_at(s: &[char], mut i: usize) -> (String, usize) {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < s.len() && is_ident(s[i]) {
        i += 1;
    }
    (s[start..i].iter().collect(), i)
}

/// Whether `s[i..]` starts with `::` after whitespace; the position after it.
fn colons_at(s: &[char], mut i: usize) -> Option<usize> {
    while i < s.len() && s[i].is_whitespace() {
        i += 1;
    }
    (s.get(i) == Some(&':') && s.get(i + 1) == Some(&':')).then_some(i + 2)
}

/// The first segment of every path a `{…}` group at `s[i] == '{'` names, at its depth.
fn group_heads(s: &[char], i: usize, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut j = i;
    let mut expect_head = true;
    while j < s.len() {
        match s[j] {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
                j += 1;
            }
            '}' => {
                depth -= 1;
                j += 1;
                if depth == 0 {
                    return;
                }
            }
            ',' if depth == 1 => {
                expect_head = true;
                j += 1;
            }
            c if expect_head && depth == 1 && is_ident(c) => {
                let (name, end) = ident_at(s, j);
                if name != "self" {
                    out.push(name);
                }
                expect_head = false;
                j = end;
            }
            _ => j += 1,
        }
    }
}

/// The top-level modules `code` reaches through `crate::`, or through `super::` chains that
/// leave `module_path` (the file's module path below the crate root).
fn imports(code: &str, module_path: &[String]) -> BTreeSet<String> {
    let s: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    // Inline `mod name { … }` blocks open at these brace depths: each is one more level for
    // `super::` to climb.
    let mut depth = 0usize;
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            '{' => {
                depth += 1;
                i += 1;
                continue;
            }
            '}' => {
                if inline_mods.last() == Some(&depth) {
                    inline_mods.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
                continue;
            }
            _ => {}
        }
        if !is_ident(s[i]) || (i > 0 && (is_ident(s[i - 1]) || s[i - 1] == '$')) {
            i += 1;
            continue;
        }
        let (word, end) = ident_at(&s, i);
        if word == "mod" {
            let (_, after_name) = ident_at(&s, end);
            let mut j = after_name;
            while j < s.len() && s[j].is_whitespace() {
                j += 1;
            }
            if s.get(j) == Some(&'{') {
                inline_mods.push(depth + 1);
            }
            i = after_name;
            continue;
        }
        if word == "crate" {
            if let Some(after) = colons_at(&s, end) {
                head_after(&s, after, &mut out);
            }
        } else if word == "super" {
            // Count the chain: super::super::…
            let mut ups = 1;
            let mut at = end;
            let mut next_head = None;
            while let Some(after) = colons_at(&s, at) {
                let (w, e) = ident_at(&s, after);
                if w == "super" {
                    ups += 1;
                    at = e;
                } else {
                    next_head = Some(after);
                    break;
                }
            }
            if ups >= module_path.len() + inline_mods.len() {
                // Left the top-level module: the next segment is a top-level module.
                if let Some(after) = next_head {
                    head_after(&s, after, &mut out);
                }
            }
            i = at;
            continue;
        }
        i = end.max(i + 1);
    }
    out.into_iter().collect()
}

/// The module named right after a `crate::` (or a group of them).
fn head_after(s: &[char], mut at: usize, out: &mut Vec<String>) {
    while at < s.len() && s[at].is_whitespace() {
        at += 1;
    }
    if s.get(at) == Some(&'{') {
        group_heads(s, at, out);
    } else {
        let (name, _) = ident_at(s, at);
        if !name.is_empty() {
            out.push(name);
        }
    }
}

/// The module path of a file below `src/`: `room/core/mod.rs` → `[room, core]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src is readable")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every violation in the files of `src`, as `file: reason` lines.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let path = module_path(rel);
        let Some(top) = path.first().cloned() else {
            continue;
        };
        if top == "lib" || BINARY.contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable");
        let code = code_only(&text);
        for to in imports(&code, &path) {
            if let Some(why) = forbidden(&top, &to) {
                bad.push(format!("{}: {why}", rel.display()));
            }
        }
        let rel_text = rel.to_string_lossy().replace('\\', "/");
        if rel_text.starts_with(CORE_DIR) {
            for word in NOT_IN_CORE {
                if code.contains(word) {
                    bad.push(format!(
                        "{}: the room core must not use `{word}` (no clock, socket, task, lock or channel)",
                        rel.display()
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn every_module_imports_only_from_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "edges against the stack:\n{}",
        bad.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_place() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut tops = BTreeSet::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let p = entry.expect("entry").path();
        let name = p.file_stem().expect("name").to_string_lossy().into_owned();
        if p.is_dir() || p.extension().is_some_and(|e| e == "rs") {
            tops.insert(name);
        }
    }
    for top in tops {
        let placed = layer_of(&top).is_some()
            || SIDE.iter().any(|(m, _, _)| *m == top)
            || BINARY.contains(&top.as_str())
            || top == "lib"
            // The browser SDK and demo page, embedded by the server (not Rust).
            || top == "web";
        assert!(
            placed,
            "src/{top} has no place in the stack (see this file's doc)"
        );
    }
}

#[cfg(test)]
mod checker {
    use super::*;

    fn heads(src: &str, path: &[&str]) -> Vec<String> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        imports(&code_only(src), &path).into_iter().collect()
    }

    #[test]
    fn reads_plain_grouped_nested_and_inline_paths() {
        let src = r#"
            use crate::protocol::{Class, Event};
            use crate::{policy::check_send, room::{Ring, Signal}, self};
            pub(crate) fn f() -> crate::store::Op { crate::metrics::count(); todo!() }
        "#;
        assert_eq!(
            heads(src, &["server", "relay"]),
            ["metrics", "policy", "protocol", "room", "store"]
        );
    }

    #[test]
    fn ignores_comments_strings_and_lifetimes() {
        let src = r##"
            // use crate::admin::router;
            /* crate::node::Server /* nested */ crate::bench::run */
            /// See [`crate::server::Relay`].
            const A: &str = "crate::admin::x";
            const B: &str = r#"crate::admin::"y""#;
            fn g<'a>(x: &'a str) -> char { let _ = x; 'c' }
            use crate::protocol::Class;
        "##;
        assert_eq!(heads(src, &["room"]), ["protocol"]);
    }

    #[test]
    fn a_super_chain_that_leaves_the_module_counts() {
        // src/config.rs: `super::` is the crate root.
        assert_eq!(heads("use super::server::Relay;", &["config"]), ["server"]);
        // An inline module is one level more.
        assert!(heads("mod tests { use super::Ring; }", &["room"]).is_empty());
        assert_eq!(
            heads("mod t { use super::super::auth::x; }", &["tls"]),
            ["auth"]
        );
        // src/room/core/mod.rs: one `super` stays in `room`, two leave it.
        assert!(heads("use super::ring::Ring;", &["room", "core"]).is_empty());
        assert_eq!(
            heads("use super::super::admin::x;", &["room", "core"]),
            ["admin"]
        );
    }

    #[test]
    fn an_upward_or_sideways_edge_is_refused() {
        assert!(forbidden("room", "protocol").is_none());
        assert!(forbidden("server", "room").is_none());
        assert!(forbidden("room", "server").is_some(), "up");
        assert!(forbidden("store", "config").is_some(), "up");
        assert!(forbidden("tls", "auth").is_some(), "sideways in one layer");
        assert!(
            forbidden("client", "server").is_some(),
            "client stays off the server"
        );
        assert!(forbidden("client", "tls").is_none());
        assert!(
            forbidden("server", "client").is_some(),
            "nothing in the stack uses client"
        );
        assert!(forbidden("bench", "client").is_none());
        assert!(forbidden("room", "nowhere").is_some(), "unplaced");
    }

    #[test]
    fn an_injected_upward_import_in_a_copy_of_the_tree_fails_the_check() {
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let copy = tempfile::tempdir().expect("temp dir");
        copy_tree(&real, copy.path());
        assert!(violations(copy.path()).is_empty(), "the copy starts clean");
        let target = copy.path().join("room").join("ring.rs");
        let mut text = std::fs::read_to_string(&target).expect("ring.rs");
        text.push_str("\n#[allow(unused_imports)]\nuse crate::server::Relay;\n");
        std::fs::write(&target, text).expect("write");
        let core = copy.path().join("room").join("core");
        if core.is_dir() {
            let file = core.join("mod.rs");
            let mut text = std::fs::read_to_string(&file).expect("core");
            text.push_str("\nfn clock() -> std::time::Instant { todo!() }\n");
            std::fs::write(&file, text).expect("write");
        }
        let bad = violations(copy.path());
        assert!(
            bad.iter()
                .any(|b| b.contains("ring.rs") && b.contains("`server`")),
            "{bad:?}"
        );
        if core.is_dir() {
            assert!(bad.iter().any(|b| b.contains("std::time")), "{bad:?}");
        }
    }

    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read") {
            let p = entry.expect("entry").path();
            let dest = to.join(p.file_name().expect("name"));
            if p.is_dir() {
                copy_tree(&p, &dest);
            } else {
                std::fs::copy(&p, &dest).expect("copy");
            }
        }
    }
}
