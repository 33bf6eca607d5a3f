//! gemba moves a model's weights onto transparent huge pages once it has loaded them, where the
//! kernel offers them (sys::hugepages), and says so in `gemba doctor`.

use std::process::Command;

fn gemba() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemba"))
}

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `memory pages:` line of `gemba doctor` (with `--model DIR` where given).
fn doctor_line(cmd: &mut Command, model: Option<&std::path::Path>) -> String {
    cmd.arg("doctor");
    if let Some(m) = model {
        cmd.arg("--model").arg(m);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("memory pages:"))
        .unwrap_or_else(|| panic!("no memory pages line in:\n{text}"))
        .to_string()
}

fn kernel_mode() -> String {
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    gemba::sys::hugepages::thp_mode(&enabled)
        .unwrap_or("")
        .to_string()
}

/// The kernel's release, e.g. (6, 18).
fn kernel_release() -> (u32, u32) {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = r.trim().split(['.', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

#[test]
fn weights_go_on_huge_pages_where_the_kernel_offers_them() {
    let demo = root().join("models/demo");
    let mode = kernel_mode();
    let offers = matches!(mode.as_str(), "always" | "madvise");
    let loaded = doctor_line(gemba().env_remove("GEMBA_HUGE_PAGES"), Some(&demo));
    // MiB of the demo's weights, pre-packed by ONNX Runtime, on huge pages (or marked for them).
    let mib = |line: &str, what: &str| -> usize {
        line.split(&format!("model weights {what} transparent huge pages ("))
            .nth(1)
            .and_then(|r| r.split(" MiB").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    if !offers {
        assert!(loaded.contains("normal pages"), "{loaded}");
    } else if kernel_release() >= (6, 1) {
        assert!(mib(&loaded, "on") >= 4, "{loaded}");
    } else {
        assert!(mib(&loaded, "marked for") >= 4, "{loaded}");
        assert!(loaded.contains("no MADV_COLLAPSE"), "{loaded}");
    }
    if offers {
        // The way of kernels before 6.1 (marked for khugepaged), asked for.
        let marked = doctor_line(gemba().env("GEMBA_HUGE_PAGES", "background"), Some(&demo));
        assert!(mib(&marked, "marked for") >= 4, "{marked}");
        assert!(marked.contains("GEMBA_HUGE_PAGES=background"), "{marked}");
    }
    let idle = doctor_line(gemba().env_remove("GEMBA_HUGE_PAGES"), None);
    if offers {
        assert!(
            idle.contains("go on transparent huge pages once a model is loaded"),
            "{idle}"
        );
    }
    let off = doctor_line(gemba().env("GEMBA_HUGE_PAGES", "0"), Some(&demo));
    assert!(off.contains("normal pages (GEMBA_HUGE_PAGES=0"), "{off}");
}
