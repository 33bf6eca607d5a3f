//! A lower layer never imports a higher one: `media/` (pixels and samples) imports no other
//! gemba layer but `sys`, and `model/` (bundles, sessions, generation) imports only `media`,
//! `config` and `sys` — never the daemon, the API, voice, capture, update, systemd, monitor,
//! report, publish or app.
//!
//! The test reads every `.rs` file under src/media/ and src/model/, strips comments, strings and
//! char literals, and collects the paths each one names from the crate root: `use crate::…`,
//! `crate::x::` in code, each item of a grouped `use crate::{a, b::c}`, and `super::` chains
//! that climb out of the layer (resolved from the file's own module path). A violation names
//! the file, the line and the layer it reaches. The checker is itself checked on synthetic
//! sources, so the test cannot pass by finding nothing.

use std::path::{Path, PathBuf};

/// Top-level modules each layer may name (besides itself).
const MEDIA_MAY_USE: &[&str] = &["media", "sys"];
const MODEL_MAY_USE: &[&str] = &["model", "media", "config", "sys"];

#[derive(Debug, PartialEq)]
struct Import {
    line: usize,
    /// The top-level module named (`capture` for `crate::capture::Frame`).
    top: String,
    /// The text as written, for the message.
    path: String,
}

/// `src` with comments, string literals and char literals blanked (newlines kept, so line
/// numbers still count).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend(bytes.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }));
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, 0usize);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(len) = raw_string_len(rest) {
            blank(&mut out, &rest[..len]);
            i += len;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}'); otherwise a lifetime, kept.
            let len = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else {
                let ch = std::str::from_utf8(&rest[1..rest.len().min(5)])
                    .ok()
                    .or_else(|| std::str::from_utf8(&rest[1..rest.len().min(4)]).ok())
                    .or_else(|| std::str::from_utf8(&rest[1..rest.len().min(3)]).ok())
                    .and_then(|s| s.chars().next());
                ch.map(char::len_utf8)
                    .filter(|&n| rest.get(1 + n) == Some(&b'\''))
                    .map(|n| n + 2)
            };
            let len = len.unwrap_or(1);
            if len == 1 {
                out.push(b'\'');
            } else {
                blank(&mut out, &rest[..len]);
            }
            i += len;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

/// Length of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) starting here.
fn raw_string_len(s: &[u8]) -> Option<usize> {
    let start = if s.starts_with(b"br") {
        2
    } else if s.starts_with(b"r") {
        1
    } else {
        return None;
    };
    let hashes = s[start..].iter().take_while(|&&c| c == b'#').count();
    if s.get(start + hashes) != Some(&b'"') {
        return None;
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = start + hashes + 1;
    s[body..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map(|p| body + p + close.len())
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The first path segment of every item of a `{…}` group (nested groups recurse), with the
/// offset where each starts.
fn group_items(code: &str, open: usize) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut expect_item = true;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'{' => {
                depth += 1;
                expect_item = depth == 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expect_item = true,
            c if expect_item && depth == 1 && is_ident(c) => {
                let end = i + b[i..].iter().take_while(|&&c| is_ident(c)).count();
                items.push((i, code[i..end].to_string()));
                expect_item = false;
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    items
}

/// Every path from the crate root that `src` names, for a file whose module path is `module`
/// (`["model", "engine"]` for src/model/engine.rs). `super::` chains are resolved from the
/// file's module (inline `mod` blocks are not tracked: their `super::*` stays inside the file).
fn crate_imports(src: &str, module: &[String]) -> Vec<Import> {
    let code = code_only(src);
    let b = code.as_bytes();
    let line_of = |pos: usize| code[..pos].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let at_word = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':');
        if !at_word {
            i += 1;
            continue;
        }
        // `crate::` or a `super::` chain: where the named path continues, and the module it is
        // relative to.
        let (rest_at, base): (usize, Vec<String>) = if code[i..].starts_with("crate::") {
            (i + "crate::".len(), Vec::new())
        } else if code[i..].starts_with("super::") {
            let mut j = i;
            let mut ups = 0;
            while code[j..].starts_with("super::") {
                ups += 1;
                j += "super::".len();
            }
            if ups > module.len() {
                i = j;
                continue;
            }
            (j, module[..module.len() - ups].to_vec())
        } else {
            i += 1;
            continue;
        };
        let mut named: Vec<(usize, String)> = Vec::new();
        if b.get(rest_at) == Some(&b'{') {
            named.extend(group_items(&code, rest_at));
        } else {
            let end = rest_at + b[rest_at..].iter().take_while(|&&c| is_ident(c)).count();
            if end > rest_at {
                named.push((rest_at, code[rest_at..end].to_string()));
            }
        }
        for (pos, first) in named {
            // `super::x` inside a layer stays in it; only the top-level module matters.
            let top = base.first().cloned().unwrap_or(first.clone());
            if top == "self" || top == "*" {
                continue;
            }
            let path = if base.is_empty() {
                format!("crate::{first}")
            } else {
                format!("crate::{}::{first}", base.join("::"))
            };
            found.push(Import {
                line: line_of(pos),
                top,
                path,
            });
        }
        i = rest_at;
    }
    found
}

/// Violations in one file: `(line, message)`.
fn check(src: &str, module: &[String], may_use: &[&str]) -> Vec<(usize, String)> {
    crate_imports(src, module)
        .into_iter()
        .filter(|imp| !may_use.contains(&imp.top.as_str()))
        .map(|imp| {
            (
                imp.line,
                format!(
                    "{} reaches `{}` ({}/ may use only {})",
                    imp.path,
                    imp.top,
                    module[0],
                    may_use.join(", ")
                ),
            )
        })
        .collect()
}

fn module_path(rel: &Path) -> Vec<String> {
    // rel: model/stream/detok.rs → [model, stream, detok]; media/processor/mod.rs → [media, processor]
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn media_and_model_import_only_lower_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut violations = Vec::new();
    let mut files_read = 0;
    let mut model_uses_media = false;
    for (layer, may_use) in [("media", MEDIA_MAY_USE), ("model", MODEL_MAY_USE)] {
        let mut files = Vec::new();
        rs_files(&src.join(layer), &mut files);
        files.sort();
        for file in files {
            let rel = file.strip_prefix(&src).unwrap();
            let shown = format!("src/{}", rel.display());
            let text = std::fs::read_to_string(&file).unwrap();
            let module = module_path(rel);
            files_read += 1;
            if layer == "model" {
                model_uses_media |= crate_imports(&text, &module)
                    .iter()
                    .any(|i| i.top == "media");
            }
            for (line, msg) in check(&text, &module, may_use) {
                violations.push(format!("{shown}:{line}: {msg}"));
            }
        }
    }
    // The walk saw the layers (a wrong root would otherwise pass with nothing read).
    assert!(
        files_read >= 20,
        "only {files_read} files read under src/media and src/model"
    );
    assert!(
        model_uses_media,
        "no file in src/model names crate::media: the reader is broken"
    );
    assert!(
        violations.is_empty(),
        "a lower layer imports a higher one:\n{}",
        violations.join("\n")
    );
}

fn module(s: &str) -> Vec<String> {
    s.split("::").map(str::to_string).collect()
}

#[test]
fn the_checker_flags_a_violating_source() {
    let src = r##"//! Uses crate::capture only in a comment.
use std::sync::Arc;
use crate::{media::jpeg, capture::Frame};
use crate::media::{self, vision};

/* crate::api in a block /* nested crate::voice */ comment */
fn f(x: &'static str) -> char {
    let s = "crate::update::install in a string";
    let r = r#"crate::report"#;
    crate::systemd::Beat::alive();
    let _ = super::super::daemon::queue::Queue::new();
    let _ = super::generate::Done::default();
    let c = '"';
    crate::publish::send(c)
}
"##;
    let got = check(src, &module("model::engine"), MODEL_MAY_USE);
    let lines: Vec<(usize, &str)> = got
        .iter()
        .map(|(l, m)| (*l, m.split(' ').next().unwrap()))
        .collect();
    assert_eq!(
        lines,
        vec![
            (3, "crate::capture"),
            (10, "crate::systemd"),
            (11, "crate::daemon"),
            (14, "crate::publish"),
        ],
        "{got:#?}"
    );
    // media may not reach model, even through a `super::` chain that climbs to the root.
    let got = check(
        "use super::super::super::model::Engine;\nuse super::super::tensor::HostTensor;\n",
        &module("media::processor::config"),
        MEDIA_MAY_USE,
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].1.contains("`model`"), "{got:?}");
    // Clean sources pass.
    assert!(check(
        "use crate::media::jpeg;\nuse super::bundle::Bundle;\nuse crate::{config::Settings, sys};\n",
        &module("model::preprocess"),
        MODEL_MAY_USE
    )
    .is_empty());
    assert_eq!(
        module_path(Path::new("media/processor/mod.rs")),
        module("media::processor")
    );
}
