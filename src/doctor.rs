//! `gemba doctor`: what this machine can run, and what a bundle actually runs on.
//!
//! It reports the ONNX Runtime library (where it was found, its version, the execution providers
//! compiled into it), CPU and memory facts, the board (Jetson device-tree model), the GPU through
//! the CUDA driver API (cudarc, loaded dynamically and guarded: no driver is a plain "no GPU"
//! line, never a panic), and, given a bundle, the provider each component really registered on.

use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct CpuFacts {
    pub model: String,
    pub logical_cores: usize,
    pub memory_total_mib: u64,
    pub memory_available_mib: u64,
    pub arch: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuDevice {
    pub index: i32,
    pub name: String,
    pub memory_total_mib: u64,
    pub compute_capability: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuFacts {
    /// `None` when there is no usable driver; the reason says why.
    pub driver_version: Option<String>,
    pub devices: Vec<GpuDevice>,
    pub reason: Option<String>,
}

pub fn cpu_facts() -> CpuFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| {
            l.starts_with("model name") || l.starts_with("Model") || l.starts_with("Hardware")
        })
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    CpuFacts {
        model,
        logical_cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_total_mib: field("MemTotal:"),
        memory_available_mib: field("MemAvailable:"),
        arch: std::env::consts::ARCH.to_string(),
    }
}

/// The board's model from the device tree (e.g. "NVIDIA Jetson Orin Nano Developer Kit").
pub fn board_model() -> Option<String> {
    std::fs::read_to_string("/proc/device-tree/model")
        .ok()
        .map(|s| s.trim_matches(char::from(0)).trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(feature = "gpu")]
pub fn gpu_facts() -> GpuFacts {
    use cudarc::driver::{result, sys};
    // cudarc panics when the driver library is absent unless asked first.
    // SAFETY: is_culib_present only tries to load the driver library; it takes no arguments
    // and touches no CUDA state.
    if !unsafe { sys::is_culib_present() } {
        return GpuFacts {
            driver_version: None,
            devices: vec![],
            reason: Some("no GPU: the CUDA driver library (libcuda.so) is not installed".into()),
        };
    }
    if let Err(e) = result::init() {
        return GpuFacts {
            driver_version: None,
            devices: vec![],
            reason: Some(format!("no GPU: {e}")),
        };
    }
    let mut v: std::ffi::c_int = 0;
    // SAFETY: the driver library is present and initialised (above); `v` is a valid out-pointer
    // for the duration of the call.
    let driver_version = (unsafe { sys::cuDriverGetVersion(&mut v) }
        == sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("{}.{}", v / 1000, (v % 1000) / 10));
    let count = match result::device::get_count() {
        Ok(n) => n,
        Err(e) => {
            return GpuFacts {
                driver_version,
                devices: vec![],
                reason: Some(format!("no GPU: {e}")),
            }
        }
    };
    let mut devices = Vec::new();
    for i in 0..count {
        let Ok(dev) = result::device::get(i) else {
            continue;
        };
        let name = result::device::get_name(dev).unwrap_or_else(|_| "unknown".into());
        // SAFETY: `dev` is a device handle the driver just returned for an index below its count.
        let mem = unsafe { result::device::total_mem(dev) }.unwrap_or(0) as u64 / (1024 * 1024);
        // SAFETY: as above; `a` is one of the driver's own attribute enum values.
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.unwrap_or(0);
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR);
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
        devices.push(GpuDevice {
            index: i,
            name,
            memory_total_mib: mem,
            compute_capability: format!("{major}.{minor}"),
        });
    }
    let reason = devices
        .is_empty()
        .then(|| "no GPU: the driver reports no devices".to_string());
    GpuFacts {
        driver_version,
        devices,
        reason,
    }
}

#[cfg(not(feature = "gpu"))]
pub fn gpu_facts() -> GpuFacts {
    GpuFacts {
        driver_version: None,
        devices: vec![],
        reason: Some("no GPU support compiled in (feature `gpu`)".into()),
    }
}

#[derive(Debug, Serialize)]
pub struct RuntimeFacts {
    pub path: Option<String>,
    pub version: Option<String>,
    pub found_by: Option<String>,
    pub error: Option<String>,
    pub providers_available: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Doctor {
    pub gemba_version: String,
    pub onnxruntime: RuntimeFacts,
    pub cpu: CpuFacts,
    pub board: Option<String>,
    pub gpu: GpuFacts,
    /// Whether the model weights go on transparent huge pages, and why not (sys::hugepages).
    pub huge_pages: String,
    /// Present when a bundle was given: per component, the providers it actually registered.
    pub components: Vec<crate::model::providers::ProviderReport>,
    pub bundle_error: Option<String>,
    /// When a bundle was given: whether speculation and prefix reuse keep its greedy output
    /// exact (model::exact's probe), so whether `auto` turns them on, and why not.
    pub speedups: Vec<String>,
    /// V4L2 capture nodes and what they offer.
    pub cameras: Vec<String>,
    /// Audio input devices as ALSA lists them.
    pub microphones: Vec<String>,
}

#[cfg(feature = "v4l2")]
fn cameras() -> Vec<String> {
    crate::capture::v4l2::list_devices()
        .into_iter()
        .filter(|d| !d.formats.is_empty())
        .map(|d| {
            format!(
                "{} ({}, {}): {}",
                d.path.display(),
                d.card,
                d.bus,
                crate::capture::negotiate::describe_offers(&d.formats)
            )
        })
        .collect()
}

#[cfg(not(feature = "v4l2"))]
fn cameras() -> Vec<String> {
    Vec::new()
}

/// Gathers everything; never fails — each problem is reported in its place.
pub fn examine(
    ort_path: Option<&Path>,
    bundle: Option<&Path>,
    policy: &crate::model::providers::ProviderPolicy,
) -> Doctor {
    let rt = crate::model::runtime::init(ort_path);
    let onnxruntime = match &rt {
        Ok(rt) => RuntimeFacts {
            path: Some(rt.path.display().to_string()),
            version: Some(rt.version.clone()),
            found_by: Some(rt.found_by.to_string()),
            error: None,
            providers_available: crate::model::runtime::available_providers(),
        },
        Err(e) => RuntimeFacts {
            path: None,
            version: None,
            found_by: None,
            error: Some(e.to_string()),
            providers_available: vec![],
        },
    };
    let mut components = Vec::new();
    let mut bundle_error = None;
    let mut speedups = Vec::new();
    if let (Some(dir), Ok(rt)) = (bundle, &rt) {
        match crate::model::Engine::load(rt, dir, policy) {
            Ok(mut engine) => {
                components = engine.provider_reports();
                speedups = engine.exactness().lines();
            }
            Err(e) => bundle_error = Some(e.to_string()),
        }
    }
    Doctor {
        gemba_version: env!("CARGO_PKG_VERSION").to_string(),
        onnxruntime,
        cpu: cpu_facts(),
        board: board_model(),
        gpu: gpu_facts(),
        huge_pages: crate::sys::hugepages::describe(),
        components,
        bundle_error,
        speedups,
        cameras: cameras(),
        microphones: crate::capture::mic::list_input_devices(),
    }
}

impl std::fmt::Display for Doctor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "gemba {}", self.gemba_version)?;
        let o = &self.onnxruntime;
        match (&o.version, &o.error) {
            (Some(v), _) => {
                writeln!(
                    f,
                    "onnxruntime: {v} at {} (found by {})",
                    o.path.as_deref().unwrap_or("?"),
                    o.found_by.as_deref().unwrap_or("?")
                )?;
                writeln!(
                    f,
                    "providers compiled in: {}",
                    o.providers_available.join(", ")
                )?;
            }
            (None, Some(e)) => writeln!(f, "onnxruntime: NOT LOADED: {e}")?,
            _ => {}
        }
        let c = &self.cpu;
        writeln!(
            f,
            "cpu: {} ({}, {} logical cores), memory {} MiB total, {} MiB available",
            c.model, c.arch, c.logical_cores, c.memory_total_mib, c.memory_available_mib
        )?;
        writeln!(
            f,
            "board: {}",
            self.board
                .as_deref()
                .unwrap_or("(no device-tree model: not a Jetson)")
        )?;
        match &self.gpu.reason {
            Some(r) if self.gpu.devices.is_empty() => writeln!(f, "gpu: {r}")?,
            _ => {
                writeln!(
                    f,
                    "gpu: CUDA driver {}",
                    self.gpu.driver_version.as_deref().unwrap_or("?")
                )?;
                for d in &self.gpu.devices {
                    writeln!(
                        f,
                        "  [{}] {} — {} MiB, compute capability {}",
                        d.index, d.name, d.memory_total_mib, d.compute_capability
                    )?;
                }
            }
        }
        writeln!(f, "memory pages: {}", self.huge_pages)?;
        if self.cameras.is_empty() {
            writeln!(f, "cameras: no V4L2 capture device")?;
        }
        for c in &self.cameras {
            writeln!(f, "camera: {c}")?;
        }
        if self.microphones.is_empty() {
            writeln!(f, "microphones: no audio input device")?;
        } else {
            writeln!(f, "microphones: {}", self.microphones.join(", "))?;
        }
        if let Some(e) = &self.bundle_error {
            writeln!(f, "bundle: {e}")?;
        }
        for r in &self.components {
            let asked: Vec<String> = r.requested.iter().map(|p| p.to_string()).collect();
            let reg: Vec<String> = r.registered.iter().map(|p| p.to_string()).collect();
            writeln!(
                f,
                "component {}: runs on {} (asked [{}] from {}; registered [{}]){}",
                r.component,
                r.actual(),
                asked.join(", "),
                r.order_from,
                reg.join(", "),
                r.intra_op_threads
                    .map(|n| format!(", {n} intra-op threads"))
                    .unwrap_or_default()
            )?;
            for (p, why) in &r.failures {
                writeln!(f, "  {p} fell back: {why}")?;
            }
        }
        for l in &self.speedups {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}
