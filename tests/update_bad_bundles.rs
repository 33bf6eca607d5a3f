//! Bad bundles never replace a good one: each is refused with its precise reason, while version 1
//! stays `current` and keeps answering, nothing new is left under `versions/` or `staging/`, and
//! the reason is what update-state.json records.
//!
//! Every archive here is made the way an attacker or a broken uploader would make it: signed by
//! the wrong key, unsigned, edited after signing, with entries no honest packer writes (raw tar
//! headers: `..`, absolute paths, links, devices), cut short, or a correctly signed bundle that
//! is wrong for this board or does not work (fails to load, fails its smoke prompt).

mod update_support;

use std::path::{Path, PathBuf};

use gemba::update::pack::{pack, PackOptions};
use gemba::update::State;
use update_support::*;

struct Case {
    name: &'static str,
    /// Makes the archive in the fleet's temp dir; returns its path.
    make: Box<dyn Fn(&Fleet) -> PathBuf>,
    /// Extra `install` arguments.
    args: &'static [&'static str],
    /// Fragments the error line and the recorded reason must contain.
    want: &'static [&'static str],
}

fn case(
    name: &'static str,
    want: &'static [&'static str],
    make: impl Fn(&Fleet) -> PathBuf + 'static,
) -> Case {
    Case {
        name,
        make: Box::new(make),
        args: &[],
        want,
    }
}

/// A copy of the int4 bundle directory to break.
fn int4_copy(f: &Fleet, name: &str) -> PathBuf {
    let d = f.path(&format!("src-{name}"));
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(int4()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    d
}

fn raw(f: &Fleet, name: &str, entries: Vec<Raw>) -> PathBuf {
    let p = f.path(&format!("{name}.tar"));
    write_raw(&p, &entries);
    p
}

/// The signed int4 bundle as version 2 with `extra` entries appended after its files.
fn with_extra(f: &Fleet, name: &str, extra: Raw) -> PathBuf {
    let (m, s, mut files) = signed(f, &int4(), &opts("2"), |_| {});
    files.push(extra);
    raw(f, name, [vec![m, s], files].concat())
}

fn cases() -> Vec<Case> {
    vec![
        case(
            "random bytes, not an archive",
            &["not a tar archive", "gemba model pack"],
            |f| {
                let p = f.path("random.tar");
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                let bytes: Vec<u8> = (0..8192)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x >> 24) as u8
                    })
                    .collect();
                std::fs::write(&p, bytes).unwrap();
                p
            },
        ),
        case(
            "random bytes behind a zstd frame",
            &["not a tar archive"],
            |f| {
                let p = f.path("random.tar.zst");
                let mut x = 0x2545_f491_4f6c_dd1du64;
                let mut bytes = b"gemba-manifest.json".to_vec();
                bytes.extend((0..8192).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                }));
                std::fs::write(&p, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
                p
            },
        ),
        case("wrong key", &["wrong key", "not trusted"], |f| {
            let p = f.path("rogue.tar.zst");
            pack(
                &int4(),
                &gemba::update::keys::SigningKey::load(&f.rogue_key).unwrap(),
                &opts("2"),
                &p,
            )
            .unwrap();
            p
        }),
        case(
            "no signature",
            &[
                "no signature",
                "gemba-manifest.json.minisig",
                "genai_config.json",
            ],
            |f| {
                let (m, _s, files) = signed(f, &int4(), &opts("2"), |_| {});
                raw(f, "unsigned", [vec![m], files].concat())
            },
        ),
        case(
            "manifest edited after signing",
            &["bad signature", "does not match"],
            |f| {
                let (mut m, s, files) = signed(f, &int4(), &opts("2"), |_| {});
                m.data = String::from_utf8(m.data)
                    .unwrap()
                    .replace("8.4 bar", "9.9 bar")
                    .into_bytes();
                raw(f, "edited-manifest", [vec![m, s], files].concat())
            },
        ),
        case(
            "tampered file",
            &["model.onnx.data", "sha256", "tampered"],
            |f| {
                let (m, s, mut files) = signed(f, &int4(), &opts("2"), |_| {});
                let data = files
                    .iter_mut()
                    .find(|r| r.name == b"model.onnx.data")
                    .unwrap();
                let mid = data.data.len() / 2;
                data.data[mid] ^= 0x55; // same size, one byte different
                raw(f, "tampered", [vec![m, s], files].concat())
            },
        ),
        case(
            "file of another size",
            &["tokenizer.json", "size", "the manifest says"],
            |f| {
                let (m, s, mut files) = signed(f, &int4(), &opts("2"), |_| {});
                files
                    .iter_mut()
                    .find(|r| r.name == b"tokenizer.json")
                    .unwrap()
                    .data
                    .extend_from_slice(b"\n\n");
                raw(f, "grown", [vec![m, s], files].concat())
            },
        ),
        case(
            "extra file",
            &["extra file", "evil.sh", "not listed"],
            |f| {
                with_extra(
                    f,
                    "extra",
                    Raw::file("evil.sh", b"#!/bin/sh\nrm -rf /\n".to_vec()),
                )
            },
        ),
        case("missing file", &["missing file", "tokenizer.json"], |f| {
            let (m, s, files) = signed(f, &int4(), &opts("2"), |_| {});
            let files = files
                .into_iter()
                .filter(|r| r.name != b"tokenizer.json")
                .collect();
            raw(f, "missing", [vec![m, s], files].concat())
        }),
        case(
            "duplicate entry",
            &["genai_config.json", "appears twice"],
            |f| {
                with_extra(
                    f,
                    "dup",
                    Raw::file(
                        "genai_config.json",
                        std::fs::read(int4().join("genai_config.json")).unwrap(),
                    ),
                )
            },
        ),
        case(
            "path traversal",
            &["../../etc/cron.d/evil", "path traversal"],
            |f| {
                with_extra(
                    f,
                    "traversal",
                    Raw::file("../../etc/cron.d/evil", b"* * * * * root sh\n".to_vec()),
                )
            },
        ),
        case(
            "absolute path",
            &["/etc/cron.d/evil", "absolute path"],
            |f| with_extra(f, "absolute", Raw::file("/etc/cron.d/evil", b"x".to_vec())),
        ),
        case(
            "symlink",
            &["symlink", "/etc/shadow", "regular files only"],
            |f| {
                // In place of a listed file, so that only the type can refuse it.
                let (m, s, files) = signed(f, &int4(), &opts("2"), |_| {});
                let mut files: Vec<Raw> = files
                    .into_iter()
                    .filter(|r| r.name != b"tokenizer_config.json")
                    .collect();
                files.push(Raw::special(
                    "tokenizer_config.json",
                    tar::EntryType::Symlink,
                    Some("/etc/shadow"),
                ));
                raw(f, "symlink", [vec![m, s], files].concat())
            },
        ),
        case("hard link", &["hard link", "genai_config.json"], |f| {
            with_extra(
                f,
                "hardlink",
                Raw::special(
                    "config.bak",
                    tar::EntryType::Link,
                    Some("genai_config.json"),
                ),
            )
        }),
        case(
            "device file",
            &["character device", "regular files only"],
            |f| {
                with_extra(
                    f,
                    "device",
                    Raw::special("console", tar::EntryType::Char, None),
                )
            },
        ),
        case(
            "truncated archive (zstd, cut mid-file)",
            &["truncated archive"],
            |f| {
                let bytes = std::fs::read(&f.v2).unwrap();
                let p = f.path("cut.tar.zst");
                std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
                p
            },
        ),
        case(
            "truncated archive (tar, cut at an entry boundary)",
            &["truncated archive", "end-of-archive"],
            |f| {
                // Every entry whole, the end-of-archive blocks gone: only the missing marker tells.
                let (m, s, files) = signed(f, &int4(), &opts("2"), |_| {});
                let p = raw(f, "cut-at-boundary", [vec![m, s], files].concat());
                let bytes = std::fs::read(&p).unwrap();
                let mut end = bytes.len();
                while end >= 512 && bytes[end - 512..end].iter().all(|&b| b == 0) {
                    end -= 512;
                }
                std::fs::write(&p, &bytes[..end]).unwrap();
                p
            },
        ),
        case(
            "manifest for another genai type",
            &["model type phi4mm", "genai_config.json says qwen2"],
            |f| {
                let (m, s, files) =
                    signed(f, &int4(), &opts("2"), |m| m.model_type = "phi4mm".into());
                raw(f, "other-type", [vec![m, s], files].concat())
            },
        ),
        Case {
            name: "a type this board does not accept",
            make: Box::new(|f: &Fleet| f.v2.clone()),
            args: &["--accept-model-type", "phi4mm"],
            want: &["model type qwen2", "accepts phi4mm"],
        },
        case("needs a newer gemba", &["needs gemba >= 99.0.0"], |f| {
            let p = f.path("newer.tar");
            pack(
                &int4(),
                &f.signing_key(),
                &PackOptions {
                    min_gemba: Some("99.0.0".into()),
                    ..opts("2")
                },
                &p,
            )
            .unwrap();
            p
        }),
        case(
            "same version, other content",
            &["version 1 is already installed with other content"],
            |f| {
                let p = f.path("v1-again.tar");
                pack(&int4(), &f.signing_key(), &opts("1"), &p).unwrap();
                p
            },
        ),
        case(
            "ONNX file that fails to load",
            &["does not load", "model.onnx", "cannot load"],
            |f| {
                let d = int4_copy(f, "bad-onnx");
                let onnx = std::fs::read(d.join("model.onnx")).unwrap();
                std::fs::write(d.join("model.onnx"), &onnx[..onnx.len() / 3]).unwrap();
                let p = f.path("bad-onnx.tar.zst");
                pack(&d, &f.signing_key(), &opts("2"), &p).unwrap();
                p
            },
        ),
        case(
            "chat template with unbounded output",
            &["smoke test", "tokenizer_config.json", "renders more than"],
            |f| {
                let d = int4_copy(f, "template-bomb");
                let cfg = d.join("tokenizer_config.json");
                let mut v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
                v["chat_template"] = "{{ 'a' * 100000000 }}{{ 'b' * 100000000 }}".into();
                std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
                let p = f.path("template-bomb.tar.zst");
                pack(&d, &f.signing_key(), &opts("2"), &p).unwrap();
                p
            },
        ),
        case(
            "loads but fails the smoke test",
            &["smoke test failed", "9.9 bar", "8.4 bar"],
            |f| {
                let p = f.path("bad-smoke.tar.zst");
                let smoke = gemba::update::SmokeSpec {
                    expect_contains: "9.9 bar".into(),
                    ..smoke()
                };
                pack(
                    &int4(),
                    &f.signing_key(),
                    &PackOptions {
                        smoke: Some(smoke),
                        ..opts("2")
                    },
                    &p,
                )
                .unwrap();
                p
            },
        ),
    ]
}

fn check(f: &Fleet, c: &Case, i: usize) -> Result<(), String> {
    let (root, state) = f.root_with_v1(&format!("case{i}"));
    let v1_record = record(&root);
    let archive = (c.make)(f);
    let out = f
        .model(&root, &state)
        .arg("install")
        .arg("--no-daemon")
        .args(c.args)
        .arg(&archive)
        .output()
        .unwrap();
    let all = text(&out);
    let mut errs = Vec::new();
    if out.status.success() {
        errs.push(format!("install succeeded:\n{all}"));
    }
    let err_line = all
        .lines()
        .find(|l| l.starts_with("gemba: error:"))
        .unwrap_or("")
        .to_string();
    for w in c.want {
        if !err_line.contains(w) {
            errs.push(format!("error line lacks {w:?}: {err_line}"));
        }
    }
    // Whatever the archive holds, the error is text a person can read (no raw binary).
    if err_line
        .chars()
        .any(|c| c == char::REPLACEMENT_CHARACTER || c.is_control())
    {
        errs.push(format!("unreadable error line: {err_line:?}"));
    }
    if all.contains("panicked") || all.contains("internal error") {
        errs.push(format!("panic:\n{all}"));
    }
    if current(&root).as_deref() != Some("1") {
        errs.push(format!("current is {:?}", current(&root)));
    }
    if installed(&root) != ["1"] {
        errs.push(format!("versions/ holds {:?}", installed(&root)));
    }
    if !staging_empty(&root) {
        errs.push("staging/ is not empty".into());
    }
    let r = record(&root);
    match &r.state {
        State::Rejected { reason } => {
            for w in c.want {
                if !reason.contains(w) {
                    errs.push(format!("recorded reason lacks {w:?}: {reason}"));
                }
            }
        }
        s => errs.push(format!(
            "recorded state {s} (the previous record was {})",
            v1_record.state
        )),
    }
    if !errs.is_empty() {
        return Err(errs.join("\n  "));
    }
    assert_answers(&root);
    Ok(())
}

#[test]
fn bad_bundles_are_refused_with_their_reason_and_the_old_model_keeps_answering() {
    let f = Fleet::new();
    let cases = cases();
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        if let Err(e) = check(&f, c, i) {
            failures.push(format!("{}:\n  {e}", c.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn verify_reports_the_same_reasons_without_touching_anything() {
    let f = Fleet::new();
    let tmp = f.path("nothing-here");
    let verify = |p: &Path| f.model(&tmp, &tmp).arg("verify").arg(p).output().unwrap();
    let ok = verify(&f.v2);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(
        text(&ok).contains("version 2 (qwen2), 5 files"),
        "{}",
        text(&ok)
    );
    let bad = with_extra(&f, "extra", Raw::file("evil.sh", b"x".to_vec()));
    let out = verify(&bad);
    assert!(
        !out.status.success() && text(&out).contains("extra file: entry \"evil.sh\""),
        "{}",
        text(&out)
    );
    assert!(!tmp.exists(), "verify created {}", tmp.display());
}

#[test]
fn a_good_bundle_installs_and_the_same_bundle_again_changes_nothing() {
    let f = Fleet::new();
    let (root, state) = f.root_with_v1("good");
    let out = f
        .model(&root, &state)
        .args(["install", "--no-daemon", "--json"])
        .arg(&f.v2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let o: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(o["outcome"], "installed");
    assert_eq!(o["gate"], "skipped (--no-daemon)");
    assert_eq!(current(&root).as_deref(), Some("2"));
    assert_eq!(
        std::fs::read_link(root.join("previous")).unwrap(),
        Path::new("versions/1")
    );
    assert_eq!(record(&root).state, State::Healthy);
    // The TensorRT cache directory of the smoke test is keyed by the bundle hash.
    let hash = gemba::update::identify(&root.join("current")).unwrap().hash;
    assert_eq!(o["bundle_hash"], hash.as_str());
    assert!(root.join("cache").join(&hash).is_dir());
    assert_answers(&root);
    let again = f
        .model(&root, &state)
        .args(["install", "--no-daemon", "--json"])
        .arg(&f.v2)
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&again.stdout).unwrap()["outcome"],
        "already-active"
    );
    let listed = f
        .model(&root, &state)
        .args(["list", "--verify", "--json"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    let l: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let vs: Vec<(&str, bool, bool, &str)> = l
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap(),
                v["current"].as_bool().unwrap(),
                v["previous"].as_bool().unwrap(),
                v["check"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(vs, [("2", true, false, "ok"), ("1", false, true, "ok")]);
    // A file changed on disk after installation is caught by list --verify.
    let data = root.join("versions/1/model.onnx.data");
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let listed = f
        .model(&root, &state)
        .args(["list", "--verify"])
        .output()
        .unwrap();
    assert!(
        !listed.status.success() && text(&listed).contains("model.onnx.data: sha256"),
        "{}",
        text(&listed)
    );
}

#[test]
fn without_a_trusted_key_nothing_is_installed() {
    let f = Fleet::new();
    let root = f.path("nokey");
    let out = gemba()
        .arg("model")
        .arg("--models")
        .arg(&root)
        .args(["install", "--no-daemon"])
        .arg(&f.v1)
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("no trusted key"),
        "{}",
        text(&out)
    );
    assert!(current(&root).is_none());
}
