//! Model weights on transparent huge pages.
//!
//! A decode step reads every weight of the decoder once: 140–270 MB for SmolLM2-135M, in 4 KiB
//! pages 35–70 thousand TLB entries' worth, each miss a page walk (two-level under a
//! hypervisor). ONNX Runtime allocates its weights with `malloc`, and glibc asks the kernel for
//! huge pages (`madvise(MADV_HUGEPAGE)` on the heap and on mapped chunks) only when its tunable
//! `glibc.malloc.hugetlb=1` is set, and tunables are read once, when a process starts. So gemba
//! starts itself once more (`exec` of its own file) with that tunable added to
//! `GLIBC_TUNABLES` (the same process id, so systemd's notify protocol is undisturbed), and then
//! puts `GLIBC_TUNABLES` back as it was, so the programs gemba starts (ORT-GenAI as a bench
//! peer, players, scripts) see the environment they were given.
//!
//! On the 2-core development VM: SmolLM2 int8 decode 1.13–1.19× ORT-GenAI with it, 0.87–1.03×
//! without (`gemba bench decode`, which alternates which one loads first; README). On bare metal
//! a page walk is cheaper and the gain smaller.
//!
//! Skipped where the kernel's transparent huge pages are `never` (or not built in), where
//! `GLIBC_TUNABLES` already names `glibc.malloc.hugetlb`, and with `GEMBA_HUGE_PAGES=0`.

use std::ffi::OsString;

/// Set in the restarted process: how `GLIBC_TUNABLES` was before (`-` unset, `=VALUE` set).
const WAS: &str = "GEMBA_GLIBC_TUNABLES_WAS";
const TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// The kernel's transparent huge page setting, as read from sysfs ("" where it is missing).
fn kernel_setting() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default()
}

/// What the kernel's `transparent_hugepage/enabled` says (`always [madvise] never`): whether
/// madvised memory can get huge pages.
pub fn thp_mode(enabled: &str) -> Option<&str> {
    let start = enabled.find('[')?;
    let end = enabled[start..].find(']')? + start;
    Some(&enabled[start + 1..end])
}

/// The `GLIBC_TUNABLES` value to restart with, or `None` where it already names the tunable.
pub fn with_tunable(current: Option<&str>) -> Option<String> {
    match current {
        Some(c) if c.split(':').any(|t| t.starts_with("glibc.malloc.hugetlb")) => None,
        Some(c) if !c.is_empty() => Some(format!("{c}:{TUNABLE}")),
        _ => Some(TUNABLE.to_string()),
    }
}

/// Whether this process runs with glibc asking for huge pages (after [`restart_with_huge_pages`]
/// or because `GLIBC_TUNABLES` said so from the start).
pub fn active() -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::Relaxed)
}

/// One line for `gemba doctor`: whether the weights go on huge pages, or why not.
pub fn describe() -> String {
    let enabled = kernel_setting();
    let mode = thp_mode(&enabled).unwrap_or("not built into this kernel");
    if active() && matches!(mode, "always" | "madvise") {
        format!("model weights on transparent huge pages (glibc.malloc.hugetlb; kernel: {mode})")
    } else if std::env::var_os("GEMBA_HUGE_PAGES").is_some_and(|v| v == "0") {
        format!("normal pages (GEMBA_HUGE_PAGES=0; kernel: {mode})")
    } else {
        format!("normal pages (kernel transparent huge pages: {mode})")
    }
}

static ACTIVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Restarts the process with `glibc.malloc.hugetlb=1` where that helps (see the module), or
/// restores the environment in the restarted process. Call first thing in `main`, before any
/// thread starts; returns where no restart happens (also when `exec` fails: gemba then runs on
/// normal pages, and says why on stderr when `RUST_LOG` is set).
pub fn restart_with_huge_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if let Some(was) = std::env::var_os(WAS) {
            // The restarted process: glibc has read its tunables; put the environment back.
            let was = was.to_string_lossy().into_owned();
            // No other thread exists yet, so changing the environment races with nothing.
            match was.strip_prefix('=') {
                Some(v) => std::env::set_var("GLIBC_TUNABLES", v),
                None => std::env::remove_var("GLIBC_TUNABLES"),
            }
            std::env::remove_var(WAS);
            ACTIVE.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let current = std::env::var("GLIBC_TUNABLES").ok();
        let Some(tunables) = with_tunable(current.as_deref()) else {
            let on = current.as_deref().is_some_and(|c| {
                c.split(':')
                    .any(|t| matches!(t, "glibc.malloc.hugetlb=1" | "glibc.malloc.hugetlb=2"))
            });
            ACTIVE.store(on, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        if std::env::var_os("GEMBA_HUGE_PAGES").is_some_and(|v| v == "0") {
            return;
        }
        if !matches!(thp_mode(&kernel_setting()), Some("always" | "madvise")) {
            return;
        }
        // The binary's own path, not /proc/self/exe: the kernel names a process after the file
        // it executes, and `gemba model install` (and ps, pgrep, the journal) know gemba by
        // that name.
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        if !exe.is_file() {
            return; // replaced or removed since it started ("… (deleted)")
        }
        let args: Vec<OsString> = std::env::args_os().collect();
        let Some((arg0, rest)) = args.split_first() else {
            return;
        };
        let was = match &current {
            Some(v) => format!("={v}"),
            None => "-".to_string(),
        };
        let err = std::process::Command::new(&exe)
            .arg0(arg0)
            .args(rest)
            .env("GLIBC_TUNABLES", tunables)
            .env(WAS, was)
            .exec();
        // Only reached when exec failed; logging is not up yet.
        if std::env::var_os("RUST_LOG").is_some() {
            eprintln!("gemba: could not restart with huge pages for the weights ({err})");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernel_mode() {
        assert_eq!(thp_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(thp_mode("[always] madvise never"), Some("always"));
        assert_eq!(thp_mode("always madvise [never]"), Some("never"));
        assert_eq!(thp_mode(""), None);
    }

    #[test]
    fn adds_the_tunable_once() {
        assert_eq!(with_tunable(None).as_deref(), Some(TUNABLE));
        assert_eq!(with_tunable(Some("")).as_deref(), Some(TUNABLE));
        assert_eq!(
            with_tunable(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
        );
        assert_eq!(with_tunable(Some("glibc.malloc.hugetlb=0")), None);
        assert_eq!(
            with_tunable(Some("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2")),
            None
        );
    }
}
