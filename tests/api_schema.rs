//! The API against its OpenAPI description (docs/openapi.yaml), kept true two ways:
//! - the router's routes ([`gemba::api::ROUTES`]) and the document's operations are the same set;
//! - schemathesis (PyPI, in the project's .venv) runs against the real daemon: examples,
//!   coverage (boundary and invalid values), fuzzing and stateful sequences through the
//!   document's links (ask → events, report, page, media), with every check it has — status
//!   codes, content types, headers and bodies as documented, no 5xx, invalid input refused,
//!   valid input accepted, unsupported methods refused, and the bearer token enforced.
//!   Bounded: 10 examples per operation, a fixed seed (`GEMBA_SCHEMATHESIS_SEED` to vary it).
//!   Settings that need saying are in tests/schemathesis.toml.
//!
//! Why schemathesis rather than a hand-written Rust check: it generates the inputs nobody thinks
//! of (odd Unicode in multipart field names, boundary values, malformed ids) and checks the
//! answers against the document mechanically; a hand-written check would only replay the cases
//! its author already had in mind.

mod api_common;
mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_common::*;

/// `(method, path)` of every operation in docs/openapi.yaml, read strictly from its `paths:`
/// block (two-space path keys, four-space method keys).
fn document_operations() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    let mut ops = BTreeSet::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!(
                "/{}",
                p.strip_suffix(':').expect("a path key ends with ':'")
            ));
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "post", "put", "delete", "patch", "head", "options"].contains(&m) {
                ops.insert((m.to_string(), path.clone().expect("a method under a path")));
            }
        }
    }
    ops
}

#[test]
fn every_route_is_in_the_openapi_document_and_every_operation_is_a_route() {
    let doc = document_operations();
    let routes: BTreeSet<(String, String)> = gemba::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(doc.len(), 18, "{doc:?}");
    assert_eq!(doc, routes);
}

fn schemathesis() -> std::path::PathBuf {
    let p = root().join(".venv/bin/schemathesis");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup test (scripts/requirements-test.txt has schemathesis)",
        p.display()
    );
    p
}

#[test]
fn the_running_api_answers_as_its_openapi_document_says() {
    let token = "0d1e2f3a4b5c6d7e8f90a1b2c3d4e5f6";
    let d = Daemon::start(&format!("token = \"{token}\""));
    // A report with a frame, so the media operation is exercised on a real file.
    let id = d.ask("What is the pressure on press 1?", &["press-1"]);
    d.events(&id, None);
    let base = std::fs::read_to_string(root().join("tests/schemathesis.toml")).unwrap();
    let config = d.dir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            "{base}\n[[operations]]\ninclude-operation-id = \"getReportMedia\"\n\
             # A real report; its id fixed, so the run is in positive mode for this operation.\n\
             parameters = {{ id = \"{id}\" }}\ngeneration.mode = \"positive\"\n"
        ),
    )
    .unwrap();
    let seed = std::env::var("GEMBA_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    eprintln!("GEMBA_SCHEMATHESIS_SEED={seed}");
    let mut child = Command::new(schemathesis())
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(root().join("docs/openapi.yaml"))
        .args(["--url", &d.url("")])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--max-examples",
            "10",
            "--seed",
            &seed,
            "--request-timeout",
            "20",
        ])
        .args(["--output-truncate", "true"])
        .current_dir(d.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(180) {
            let _ = child.kill();
            panic!("schemathesis ran over 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: String = stdout
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        status.success(),
        "schemathesis found the API and its document disagree ({status}):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really tested: every selected operation, every phase.
    assert!(
        stdout.contains("Selected: 15/18") && stdout.contains("Tested: 15"),
        "{tail}"
    );
    for phase in ["Coverage", "Fuzzing", "Stateful"] {
        assert!(
            stdout.contains(&format!("✅ {phase}")),
            "{phase} did not pass: {tail}"
        );
    }
    eprintln!("{tail}");
}
