//! Packing: keygen → pack → verify through the CLI; signing offline (manifest out, detached
//! signature in, as with `minisign -Sm` on an air-gapped machine); reproducible manifests.

mod update_support;

use update_support::*;

#[test]
fn keygen_pack_verify_and_the_smoke_file() {
    let f = Fleet::new();
    let prefix = f.path("k");
    let out = gemba()
        .args(["model", "keygen", "--out"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let pubtext = std::fs::read_to_string(f.path("k.pub")).unwrap();
    assert!(
        pubtext.starts_with("untrusted comment: minisign public key"),
        "{pubtext}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(f.path("k.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let again = gemba()
        .args(["model", "keygen", "--out"])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        !again.status.success() && text(&again).contains("pass --force"),
        "{}",
        text(&again)
    );

    // The smoke test from gemba-smoke.json in the bundle directory (which is not packed).
    let src = f.path("src");
    std::fs::create_dir(&src).unwrap();
    for e in std::fs::read_dir(fp32()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), src.join(e.file_name())).unwrap();
    }
    let no_smoke = gemba()
        .args(["model", "pack"])
        .arg(&src)
        .arg("--key")
        .arg(f.path("k.key"))
        .args(["--version", "5", "-o"])
        .arg(f.path("x.tar"))
        .output()
        .unwrap();
    assert!(
        !no_smoke.status.success() && text(&no_smoke).contains("no smoke test"),
        "{}",
        text(&no_smoke)
    );
    std::fs::write(
        src.join("gemba-smoke.json"),
        format!(r#"{{"prompt": "{PROMPT}", "expect_contains": "{EXPECT}"}}"#),
    )
    .unwrap();
    let archive = f.path("b5.tar.zst");
    let out = gemba()
        .args(["model", "pack"])
        .arg(&src)
        .arg("--key")
        .arg(f.path("k.key"))
        .args(["--version", "5", "-o"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = gemba()
        .args(["model", "--trusted-key"])
        .arg(f.path("k.pub"))
        .arg("verify")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("version 5 (qwen2), 5 files, 1208824 bytes"),
        "{}",
        text(&out)
    );
    // A link in the bundle directory is an error, not silently skipped.
    std::os::unix::fs::symlink("/etc/passwd", src.join("passwd")).unwrap();
    let out = gemba()
        .args(["model", "pack"])
        .arg(&src)
        .arg("--key")
        .arg(f.path("k.key"))
        .args(["--version", "6", "-o"])
        .arg(f.path("y.tar"))
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("passwd: not a regular file"),
        "{}",
        text(&out)
    );
}

#[test]
fn signing_offline_with_a_detached_signature() {
    let f = Fleet::new();
    let common = |c: &mut std::process::Command| {
        c.args([
            "--version",
            "4",
            "--smoke-prompt",
            PROMPT,
            "--expect-contains",
            EXPECT,
        ]);
    };
    let manifest = f.path("gemba-manifest.json");
    let mut c = gemba();
    c.args(["model", "pack"])
        .arg(int4())
        .args(["--manifest-only", "-o"])
        .arg(&manifest);
    common(&mut c);
    assert!(c.output().unwrap().status.success());
    // Packing is deterministic: the same manifest bytes every time.
    let again = f.path("again.json");
    let mut c = gemba();
    c.args(["model", "pack"])
        .arg(int4())
        .args(["--manifest-only", "-o"])
        .arg(&again);
    common(&mut c);
    assert!(c.output().unwrap().status.success());
    assert_eq!(
        std::fs::read(&manifest).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // "Offline": sign the manifest file with the fleet key, as `minisign -Sm` would.
    let sig = f.path("gemba-manifest.json.minisig");
    std::fs::write(
        &sig,
        f.signing_key()
            .sign(&std::fs::read(&manifest).unwrap(), "signed offline"),
    )
    .unwrap();
    let archive = f.path("b4.tar.zst");
    let mut c = f.model(&f.path("r"), &f.path("s"));
    c.args(["pack"])
        .arg(int4())
        .arg("--signature")
        .arg(&sig)
        .arg("-o")
        .arg(&archive);
    common(&mut c);
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let (root, state) = f.root_with_v1("offline");
    let out = f
        .model(&root, &state)
        .args(["install", "--no-daemon"])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(current(&root).as_deref(), Some("4"));
    assert_answers(&root);
    // A signature over another manifest (here: another version) is refused when packing.
    let mut c = f.model(&f.path("r"), &f.path("s"));
    c.args(["pack"])
        .arg(int4())
        .arg("--signature")
        .arg(&sig)
        .arg("-o")
        .arg(f.path("b5.tar"));
    c.args([
        "--version",
        "5",
        "--smoke-prompt",
        PROMPT,
        "--expect-contains",
        EXPECT,
    ]);
    let out = c.output().unwrap();
    assert!(
        !out.status.success() && text(&out).contains("bad signature"),
        "{}",
        text(&out)
    );
}
