//! Model weights on transparent huge pages.
//!
//! A decode step reads every weight of the decoder once: 140–270 MB for SmolLM2-135M, in 4 KiB
//! pages 35–70 thousand TLB entries' worth, each miss a page walk (two-level under a
//! hypervisor). ONNX Runtime reads a bundle's weights into heap memory it allocates with
//! `malloc` when it builds a session (and pre-packs them there). So once an engine's sessions are
//! built, gemba asks the kernel to move that memory onto huge pages: every 2 MiB-aligned range of
//! the process's private, writable, anonymous memory whose 512 pages are all resident
//! (`mincore`) gets `madvise(MADV_COLLAPSE)` (Linux 6.1 or later), which copies it into a huge
//! page there and then. Ranges only partly used (thread stacks, a half-filled heap end) are left
//! alone, so the resident size does not grow.
//!
//! Only what is resident after loading: the buffers a run allocates later stay on normal pages.
//! gemba first did this with glibc's `glibc.malloc.hugetlb=1` tunable (a restart of itself with
//! it set), which madvises the whole heap; then every large temporary buffer of a run was
//! faulted in as huge pages again, at a cost of compaction and zeroing 2 MiB at a time: the
//! demo's vision run for four frames took 140–760 ms instead of 30–57 ms, 1.75 s of a bench's
//! 6.2 s CPU time went to the kernel, and four looks together ran slower than one at a time.
//!
//! On the 2-core development VM: SmolLM2 int8 decode 1.04–1.17× ORT-GenAI with the weights on
//! huge pages, 0.87–1.03× without (`gemba bench decode`, which alternates which one loads first;
//! README); collapsing its ~220 MB takes 0.3–1.2 s at load. On bare metal a page walk is cheaper
//! and the gain smaller.
//!
//! Kernels before 6.1 (JetPack 6 ships 5.15) have no `MADV_COLLAPSE`: there the same ranges get
//! `madvise(MADV_HUGEPAGE)`, and the kernel's khugepaged thread collapses them in the background
//! (by default 16 MiB every 10 s, so SmolLM2's weights within a few minutes of loading — a
//! daemon's case). `GEMBA_HUGE_PAGES=background` asks for that way on any kernel.
//!
//! Skipped where the kernel's transparent huge pages are `never` (or not built in), and with
//! `GEMBA_HUGE_PAGES=0`.

use std::sync::Mutex;
use std::time::Instant;

/// A huge page.
const HUGE: usize = 2 << 20;
/// `MADV_COLLAPSE` (Linux 6.1, include/uapi/asm-generic/mman-common.h).
const MADV_COLLAPSE: i32 = 25;

/// Bytes the last load put on huge pages, and how (for `gemba doctor`).
static LAST: Mutex<Option<(usize, How)>> = Mutex::new(None);

/// The kernel's transparent huge page setting, as read from sysfs ("" where it is missing).
fn kernel_setting() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default()
}

/// What the kernel's `transparent_hugepage/enabled` says (`always [madvise] never`): whether
/// memory can get huge pages.
pub fn thp_mode(enabled: &str) -> Option<&str> {
    let start = enabled.find('[')?;
    let end = enabled[start..].find(']')? + start;
    Some(&enabled[start + 1..end])
}

fn opted_out() -> bool {
    std::env::var_os("GEMBA_HUGE_PAGES").is_some_and(|v| v == "0")
}

fn background_asked() -> bool {
    std::env::var_os("GEMBA_HUGE_PAGES").is_some_and(|v| v == "background")
}

/// How the weights were put on huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Copied into huge pages there and then (`MADV_COLLAPSE`).
    Collapsed,
    /// Marked for khugepaged (`MADV_HUGEPAGE`), which collapses them in the background.
    Advised,
}

/// What one [`collapse_resident`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Collapsed {
    /// Bytes now on huge pages (collapsed) or marked for them (advised).
    pub bytes: usize,
    pub how: How,
    /// Fully resident 2 MiB ranges that the kernel could not collapse (no huge page free, …).
    pub refused: usize,
    pub millis: f64,
}

impl Collapsed {
    /// For the log: "182 MiB of weights moved onto huge pages in 310 ms".
    pub fn summary(&self) -> String {
        let what = match self.how {
            How::Collapsed => "moved onto huge pages",
            How::Advised => "marked for huge pages (khugepaged collapses them in the background)",
        };
        let refused = match self.refused {
            0 => String::new(),
            n => format!(" ({} MiB refused by the kernel)", (n * HUGE) >> 20),
        };
        format!(
            "{} MiB of weights {what} in {:.0} ms{refused}",
            self.bytes >> 20,
            self.millis
        )
    }
}

/// The starts of the 2 MiB-aligned, 2 MiB long ranges inside the private, writable, anonymous
/// mappings of a `/proc/PID/maps` text (the heap included; files, stacks and the kernel's own
/// areas not).
pub fn candidate_ranges(maps: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        // offset, device, inode, then the path (absent for anonymous memory).
        let path = f.nth(3);
        if perms != "rw-p" || path.is_some_and(|p| p != "[heap]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        let mut s = a.div_ceil(HUGE) * HUGE;
        while s.checked_add(HUGE).is_some_and(|e| e <= b) {
            out.push(s);
            s += HUGE;
        }
    }
    out
}

/// Moves the fully resident 2 MiB ranges of anonymous memory onto huge pages (see the module).
/// Call after loading a model; `Err` says why nothing was done.
pub fn collapse_resident() -> Result<Collapsed, String> {
    if opted_out() {
        return Err("GEMBA_HUGE_PAGES=0".into());
    }
    let setting = kernel_setting();
    let mode = thp_mode(&setting).unwrap_or("not built into this kernel");
    if !matches!(mode, "always" | "madvise") {
        return Err(format!("kernel transparent huge pages: {mode}"));
    }
    collapse(mode)
}

#[cfg(target_os = "linux")]
fn collapse(mode: &str) -> Result<Collapsed, String> {
    let started = Instant::now();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("reading /proc/self/maps: {e}"))?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    };
    let mut resident = vec![0u8; HUGE / page];
    let (mut bytes, mut refused) = (0, 0);
    let mut how = if background_asked() {
        How::Advised
    } else {
        How::Collapsed
    };
    let advise = |addr: *mut libc::c_void, how: How| {
        let advice = match how {
            How::Collapsed => MADV_COLLAPSE,
            How::Advised => libc::MADV_HUGEPAGE,
        };
        // SAFETY: MADV_COLLAPSE keeps the contents (it copies them into a huge page) and
        // MADV_HUGEPAGE only marks the range; neither changes permissions, and a range unmapped
        // since the maps were read fails with ENOMEM.
        if unsafe { libc::madvise(addr, HUGE, advice) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error())
        }
    };
    for start in candidate_ranges(&maps) {
        let addr = start as *mut libc::c_void;
        // SAFETY: the range lies inside a mapping listed just now; mincore only reads the page
        // tables and writes one byte per page into `resident` (HUGE / page bytes long).
        if unsafe { libc::mincore(addr, HUGE, resident.as_mut_ptr()) } != 0
            || resident.iter().any(|r| r & 1 == 0)
        {
            continue;
        }
        let mut r = advise(addr, how);
        if r == Err(Some(libc::EINVAL)) && how == How::Collapsed && bytes == 0 {
            // No MADV_COLLAPSE (Linux before 6.1): khugepaged, in the background.
            how = How::Advised;
            r = advise(addr, how);
        }
        match r {
            Ok(()) => bytes += HUGE,
            Err(_) => refused += 1,
        }
    }
    if bytes == 0 && refused > 0 {
        return Err(format!(
            "the kernel refused all {refused} ranges (kernel transparent huge pages: {mode})"
        ));
    }
    *LAST.lock().unwrap_or_else(|e| e.into_inner()) = Some((bytes, how));
    Ok(Collapsed {
        bytes,
        how,
        refused,
        millis: started.elapsed().as_secs_f64() * 1e3,
    })
}

#[cfg(not(target_os = "linux"))]
fn collapse(_mode: &str) -> Result<Collapsed, String> {
    Err("not Linux".into())
}

/// One line for `gemba doctor`: whether the weights go on huge pages, or why not.
pub fn describe() -> String {
    let setting = kernel_setting();
    let mode = thp_mode(&setting).unwrap_or("not built into this kernel");
    let last = *LAST.lock().unwrap_or_else(|e| e.into_inner());
    if opted_out() {
        format!("normal pages (GEMBA_HUGE_PAGES=0; kernel: {mode})")
    } else if !matches!(mode, "always" | "madvise") {
        format!("normal pages (kernel transparent huge pages: {mode})")
    } else if let Some((bytes, How::Collapsed)) = last.filter(|l| l.0 > 0) {
        format!(
            "model weights on transparent huge pages ({} MiB collapsed after loading; kernel: \
             {mode})",
            bytes >> 20
        )
    } else if let Some((bytes, How::Advised)) = last.filter(|l| l.0 > 0) {
        let why = if background_asked() {
            "GEMBA_HUGE_PAGES=background"
        } else {
            "this kernel has no MADV_COLLAPSE"
        };
        format!(
            "model weights marked for transparent huge pages ({} MiB after loading, which \
             khugepaged collapses in the background: {why}; kernel: {mode})",
            bytes >> 20
        )
    } else {
        format!(
            "model weights go on transparent huge pages once a model is loaded (kernel: {mode})"
        )
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
    fn only_anonymous_private_writable_memory_in_whole_huge_pages() {
        let maps = "\
55d0c8a00000-55d0c8e00000 rw-p 00000000 00:00 0                          [heap]
7f0000100000-7f0000700000 rw-p 00000000 00:00 0 
7f0000800000-7f0000a00000 r--p 00000000 00:00 0 
7f0000a00000-7f0000e00000 rw-p 00001000 fd:01 1234                       /usr/lib/libonnxruntime.so
7f0001000000-7f0001200000 rw-p 00000000 00:00 0                          [stack]
7f0002000000-7f00021ff000 rw-p 00000000 00:00 0 
garbage line
";
        assert_eq!(
            candidate_ranges(maps),
            vec![
                0x55d0c8a00000,
                0x55d0c8c00000,
                // 1 MiB in: the first whole huge page starts at 2 MiB.
                0x7f0000200000,
                0x7f0000400000,
            ]
        );
    }

    #[test]
    fn collapsing_keeps_the_contents() {
        // 8 MiB of our own, filled: whatever the kernel does with it, the bytes stay.
        let v: Vec<u8> = (0..8usize << 20).map(|i| (i * 31 % 251) as u8).collect();
        let sum: u64 = v.iter().map(|&b| b as u64).sum();
        let r = collapse_resident();
        assert_eq!(v.iter().map(|&b| b as u64).sum::<u64>(), sum, "{r:?}");
        assert!(v
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i * 31 % 251) as u8));
    }
}
