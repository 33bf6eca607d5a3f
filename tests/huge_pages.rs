//! gemba restarts itself with glibc's huge-page tunable where the kernel offers transparent huge
//! pages (sys::hugepages), under its own name, and hands the programs it starts the environment
//! it was given.

use std::process::Command;

fn gemba() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemba"))
}

fn doctor_line(cmd: &mut Command) -> String {
    let out = cmd.arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("memory pages:"))
        .unwrap_or_else(|| panic!("no memory pages line in:\n{text}"))
        .to_string()
}

fn kernel_offers_huge_pages() -> bool {
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    matches!(
        gemba::sys::hugepages::thp_mode(&enabled),
        Some("always" | "madvise")
    )
}

#[test]
fn weights_go_on_huge_pages_where_the_kernel_offers_them() {
    let line = doctor_line(
        gemba()
            .env_remove("GLIBC_TUNABLES")
            .env_remove("GEMBA_HUGE_PAGES"),
    );
    if kernel_offers_huge_pages() {
        assert!(
            line.contains("model weights on transparent huge pages"),
            "{line}"
        );
    } else {
        assert!(line.contains("normal pages"), "{line}");
    }
    let off = doctor_line(gemba().env("GEMBA_HUGE_PAGES", "0"));
    assert!(off.contains("normal pages (GEMBA_HUGE_PAGES=0"), "{off}");
    // A value of the person's own is kept (and with hugetlb=0 gemba leaves it off).
    let theirs = doctor_line(gemba().env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0"));
    assert!(theirs.contains("normal pages"), "{theirs}");
}

#[test]
fn programs_gemba_starts_get_the_environment_it_was_given() {
    let names = ["debug", "env", "GLIBC_TUNABLES", "GEMBA_GLIBC_TUNABLES_WAS"];
    let run = |cmd: &mut Command| {
        let out = cmd.args(names).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let theirs = run(gemba().env("GLIBC_TUNABLES", "glibc.malloc.arena_max=4"));
    assert_eq!(
        theirs,
        "GLIBC_TUNABLES=glibc.malloc.arena_max=4\nGEMBA_GLIBC_TUNABLES_WAS unset\n"
    );
    let none = run(gemba().env_remove("GLIBC_TUNABLES"));
    assert_eq!(
        none,
        "GLIBC_TUNABLES unset\nGEMBA_GLIBC_TUNABLES_WAS unset\n"
    );
}
