//! Bounded memory for untrusted inputs, tried the way a hostile client or a careless bundle
//! author would: decompression bombs (a 20000×20000 PNG of zeros, a JPEG whose header claims
//! 60000×60000) through `gemba ask --image` and `POST /ask` (JSON and multipart, 4 at once), a
//! chat template with unbounded output, and an hour-long WAV. Peak resident memory is read from
//! `/proc/<pid>/status` (`VmHWM`) while the process runs, and from `wait4`'s `ru_maxrss` for the
//! CLI (exact, whatever the sampling missed). Everything is written in temporary directories.

mod api_common;
mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use api_common::Daemon;
use base64::Engine as _;
use serde_json::{json, Value};

/// The bound every bomb must stay under (the issue's figure).
const PEAK_LIMIT_KIB: u64 = 300 * 1024;

fn demo_model() -> PathBuf {
    common::root().join("models/demo")
}

/// Files made once per test binary: the bombs and their well-formed neighbours.
struct Fixtures {
    _dir: tempfile::TempDir,
    png_bomb: PathBuf,
    jpeg_bomb: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let png_bomb = dir.path().join("bomb.png");
        // A valid 8-bit grey PNG of 20000×20000 zeros: zlib at level 9 squeezes its 400 MB of
        // scanlines into about 389 KB (the size of the file in the finding).
        let script = r#"
import struct, sys, zlib
w = h = 20000
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
c = zlib.compressobj(9)
row = b"\0" * (w + 1)
idat = b"".join(c.compress(row * 500) for _ in range(h // 500)) + c.flush()
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
"#;
        let st = Command::new(common::python()).arg("-c").arg(script).arg(&png_bomb).status().unwrap();
        assert!(st.success());
        let len = std::fs::metadata(&png_bomb).unwrap().len();
        assert!((300_000..500_000).contains(&len), "the PNG bomb is {len} bytes");
        let jpeg_bomb = dir.path().join("bomb.jpg");
        std::fs::write(&jpeg_bomb, with_jpeg_size(&jpeg(32, 32, false), 60000, 60000)).unwrap();
        Fixtures { _dir: dir, png_bomb, jpeg_bomb }
    })
}

/// A real baseline JPEG of `w`×`h` (CMYK when asked).
fn jpeg(w: u16, h: u16, cmyk: bool) -> Vec<u8> {
    let channels = if cmyk { 4 } else { 3 };
    let px: Vec<u8> = (0..usize::from(w) * usize::from(h) * channels)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut out = Vec::new();
    let color = if cmyk {
        jpeg_encoder::ColorType::Cmyk
    } else {
        jpeg_encoder::ColorType::Rgb
    };
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&px, w, h, color)
        .unwrap();
    out
}

/// The same JPEG with its frame header claiming another size (nothing else changed).
fn with_jpeg_size(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let sof = out
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .expect("a baseline frame header");
    out[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    out
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        // Pixels that do not compress, so the file's size follows its pixel count.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let px: Vec<u8> = (0..w * h * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        enc.write_header().unwrap().write_image_data(&px).unwrap();
    }
    out
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What a finished `gemba` command did, and its peak resident memory in KiB.
struct Run {
    code: i32,
    stderr: String,
    peak_kib: u64,
}

/// Runs `cmd` to its end, sampling `VmHWM` every 5 ms and taking `ru_maxrss` from `wait4`.
fn run_measured(mut cmd: Command) -> Run {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let t = Instant::now();
    let mut peak = 0;
    let (status, rusage) = loop {
        if let Some(k) = vm_hwm_kib(pid) {
            peak = peak.max(k);
        }
        let mut status = 0;
        // SAFETY: rusage is a plain C struct of integers, for which all-zero bytes are a value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `ru` are valid out-pointers for the call; the pid is our child.
        let r = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid as i32 {
            break (status, ru);
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "gemba did not finish within 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    std::mem::forget(child); // reaped above
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    Run {
        code,
        stderr: reader.join().unwrap(),
        peak_kib: peak.max(rusage.ru_maxrss as u64),
    }
}

fn ask_cmd(model: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut c = common::gemba();
    c.args(["ask", "--max-tokens", "8", "--model"])
        .arg(model)
        .args(args);
    c
}

/// Runs four `gemba ask` at once with the same arguments.
fn four_at_once(model: &Path, args: &[&std::ffi::OsStr]) -> Vec<Run> {
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cmd = ask_cmd(model, args);
            std::thread::spawn(move || run_measured(cmd))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn gemba_ask_refuses_png_and_jpeg_bombs_from_their_headers_in_bounded_memory() {
    let f = fixtures();
    for (bomb, size) in [(&f.png_bomb, "20000x20000"), (&f.jpeg_bomb, "60000x60000")] {
        let runs = four_at_once(
            &demo_model(),
            &[
                "--image".as_ref(),
                bomb.as_os_str(),
                "What colour is the lamp?".as_ref(),
            ],
        );
        for r in &runs {
            assert_ne!(r.code, 0, "{}", r.stderr);
            assert!(
                r.stderr.contains(size)
                    && r.stderr.contains("limit")
                    && r.stderr.contains("before decoding"),
                "{}",
                r.stderr
            );
            assert!(
                r.peak_kib < PEAK_LIMIT_KIB,
                "gemba ask peaked at {} KiB on {}",
                r.peak_kib,
                bomb.display()
            );
        }
        eprintln!(
            "gemba ask, 4 at once, {}: peak RSS {:?} KiB",
            bomb.file_name().unwrap().to_string_lossy(),
            runs.iter().map(|r| r.peak_kib).collect::<Vec<_>>()
        );
    }
}

/// A `multipart/form-data` body with a text field and one file field.
fn multipart(text: &str, field: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "gemba-test-boundary-5f1c";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\n{text}\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"f\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn post_multipart(d: &Daemon, text: &str, field: &str, file: &[u8]) -> (u16, Value) {
    let (ctype, body) = multipart(text, field, file);
    let mut r = d
        .agent
        .post(d.url("/ask"))
        .header("Content-Type", &ctype)
        .send(&body[..])
        .unwrap();
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

fn image_json(file: &[u8]) -> Value {
    json!({ "text": "What colour is the lamp?", "image": base64::engine::general_purpose::STANDARD.encode(file) })
}

#[test]
fn post_ask_refuses_bombs_before_decoding_and_the_daemon_stays_small() {
    let f = fixtures();
    let png_bomb = std::fs::read(&f.png_bomb).unwrap();
    let jpeg_bomb = std::fs::read(&f.jpeg_bomb).unwrap();
    let d = Daemon::start("max_asks = 4");
    let (idle_kib, _) = d.memory_kib();
    // Four PNG bombs as JSON and four JPEG bombs as multipart, all at once.
    // The OpenAI-compatible endpoint takes the same bombs as data URIs.
    let chat = |bytes: &[u8], mime: &str| {
        use base64::Engine as _;
        let uri = format!(
            "data:{mime};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        );
        let (code, v) = d.post_json(
            "/v1/chat/completions",
            &serde_json::json!({"model": "gemba", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What colour is the lamp?"},
                {"type": "image_url", "image_url": {"url": uri}}]}]}),
        );
        (code, serde_json::json!({"error": v["error"]["message"]}))
    };
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for _ in 0..4 {
            hs.push(s.spawn(|| d.post_json("/ask", &image_json(&png_bomb))));
            hs.push(
                s.spawn(|| post_multipart(&d, "What colour is the lamp?", "image", &jpeg_bomb)),
            );
            hs.push(s.spawn(|| chat(&png_bomb, "image/png")));
            hs.push(s.spawn(|| chat(&jpeg_bomb, "image/jpeg")));
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (code, v) in &answers {
        assert_eq!(*code, 413, "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("api.max_image_pixels") && e.contains("nothing was decoded"),
            "{e}"
        );
        assert!(
            e.contains("20000x20000") || e.contains("60000x60000"),
            "{e}"
        );
    }
    let (peak_kib, _) = d.memory_kib();
    eprintln!("daemon: idle peak {idle_kib} KiB, after 8 PNG + 8 JPEG bombs at once (POST /ask and /v1/chat/completions) {peak_kib} KiB");
    assert!(
        peak_kib < PEAK_LIMIT_KIB,
        "the daemon peaked at {peak_kib} KiB"
    );
    // None of them took a slot: the daemon answers normally.
    let id = d.ask("What is the pressure on press 1?", &[]);
    assert_eq!(d.events(&id, None).last().unwrap().data["event"], "closed");
}

#[test]
fn post_ask_takes_and_refuses_the_images_gemba_ask_takes_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let good_jpeg = jpeg(64, 48, false);
    let truncated = good_jpeg[..good_jpeg.len() * 2 / 3].to_vec();
    let cmyk = jpeg(32, 32, true);
    let good_png = png(40, 30);
    let cut_png = good_png[..good_png.len() - 30].to_vec();
    let d = Daemon::start("");
    let cases: [(&str, &[u8], bool, &str); 5] = [
        ("good.jpg", &good_jpeg, true, ""),
        ("good.png", &good_png, true, ""),
        ("truncated.jpg", &truncated, false, "truncated"),
        ("cmyk.jpg", &cmyk, false, "CMYK"),
        ("cut.png", &cut_png, false, "PNG"),
    ];
    for (name, bytes, ok, why) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = ask_cmd(
            &demo_model(),
            &[
                "--image".as_ref(),
                path.as_os_str(),
                "What colour is the lamp?".as_ref(),
            ],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.success(),
            ok,
            "gemba ask --image {name}: {stderr}"
        );
        for (code, v) in [
            d.post_json("/ask", &image_json(bytes)),
            post_multipart(&d, "What colour?", "image", bytes),
        ] {
            if ok {
                assert_eq!(code, 202, "{name}: {v}");
                let id = v["report_id"].as_str().unwrap();
                assert_eq!(d.events(id, None).last().unwrap().data["event"], "closed");
            } else {
                assert_eq!(code, 422, "{name}: {v}");
                let e = v["error"].as_str().unwrap();
                assert!(e.contains(why), "{name}: {e}");
                assert!(stderr.contains(why), "{name}: gemba ask said {stderr}");
                if name.ends_with(".png") {
                    assert!(!e.contains("JPEG"), "a PNG error says JPEG: {e}");
                }
            }
        }
    }
}

#[test]
fn uploads_over_the_byte_budget_are_refused_naming_it() {
    let d = Daemon::start("max_media_bytes = \"64KiB\"");
    let big = png(200, 200); // about 120 KB: pixels that do not compress
    assert!(big.len() > 64 * 1024);
    let (code, v) = d.post_json("/ask", &image_json(&big));
    assert_eq!(code, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("api.max_media_bytes"),
        "{v}"
    );
    let (code, v) = post_multipart(&d, "What colour?", "audio", &big);
    assert_eq!(code, 413, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("api.max_media_bytes"),
        "{v}"
    );
    // Under the budget, an upload is taken.
    let (code, v) = d.post_json("/ask", &image_json(&png(64, 64)));
    assert_eq!(code, 202, "{v}");
}

#[test]
fn a_pixel_budget_in_the_config_is_applied_from_the_header() {
    let d = Daemon::start("max_image_pixels = 1000");
    let (code, v) = d.post_json("/ask", &image_json(&png(40, 30)));
    assert_eq!(code, 413, "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("40x30 = 1200 pixels") && e.contains("api.max_image_pixels limit of 1000"),
        "{e}"
    );
    let (code, v) = d.post_json("/ask", &image_json(&png(40, 25)));
    assert_eq!(code, 202, "{v}");
    // Out-of-range budgets are config errors naming the key.
    for bad in [
        "max_image_pixels = 0",
        "max_image_pixels = 100000001",
        "max_media_bytes = 100",
        "max_connections = 0",
        "header_timeout = \"0s\"",
        "body_timeout = \"2h\"",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = api_common::write_config(dir.path(), bad, &api_common::tiny_model());
        let out = common::gemba()
            .args(["config", "check"])
            .arg(&cfg)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}: accepted");
        let key = bad.split_whitespace().next().unwrap();
        assert!(stderr.contains(&format!("api.{key}")), "{bad}: {stderr}");
    }
}

/// A mono 16-bit WAV of `seconds` at `rate` Hz, written as a stream (a quiet tone).
fn write_wav(path: &Path, rate: u32, seconds: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let mut i16w = w.get_i16_writer(rate * seconds);
    for i in 0..rate * seconds {
        i16w.write_sample(((i as f32 * 0.05).sin() * 3000.0) as i16);
    }
    i16w.flush().unwrap();
    w.finalize().unwrap();
}

#[test]
fn an_hour_of_audio_costs_no_more_memory_than_the_thirty_seconds_the_model_hears() {
    let dir = tempfile::tempdir().unwrap();
    let long = dir.path().join("hour.wav");
    let short = dir.path().join("ten-seconds.wav");
    // 16 kHz, 16-bit mono: an hour is 115 MB, the size in the finding.
    write_wav(&long, 16_000, 3600);
    write_wav(&short, 16_000, 10);
    assert!(std::fs::metadata(&long).unwrap().len() > 115_000_000);
    let mut peaks = Vec::new();
    for wav in [&short, &long] {
        let r = run_measured(ask_cmd(
            &demo_model(),
            &[
                "--audio".as_ref(),
                wav.as_os_str(),
                "What did you hear?".as_ref(),
            ],
        ));
        assert_eq!(r.code, 0, "{}", r.stderr);
        peaks.push(r.peak_kib);
    }
    eprintln!(
        "gemba ask --audio: peak RSS 10 s {} KiB, 1 h {} KiB",
        peaks[0], peaks[1]
    );
    // The hour reads, mixes and resamples only its first 30 s (plus the filter's reach): it may
    // cost what 20 more seconds of 16-bit samples in f32 do (a few MB), not the 570 MB of before.
    assert!(
        peaks[1] < peaks[0] + 16 * 1024,
        "10 s: {} KiB, 1 h: {} KiB",
        peaks[0],
        peaks[1]
    );
    assert!(peaks[1] < PEAK_LIMIT_KIB);
}

#[test]
fn a_chat_template_with_unbounded_output_fails_fast_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    common::copy_bundle(&demo_model(), &bundle);
    let cfg_path = bundle.join("tokenizer_config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = json!("{{ 'a' * 100000000 }}{{ 'b' * 100000000 }}");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    let t = Instant::now();
    let r = run_measured(ask_cmd(&bundle, &["What colour is the lamp?".as_ref()]));
    eprintln!(
        "gemba ask with a 200 MB template: exit {} after {:?}, peak RSS {} KiB",
        r.code,
        t.elapsed(),
        r.peak_kib
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains(&cfg_path.display().to_string())
            && r.stderr.contains("renders more than"),
        "{}",
        r.stderr
    );
    // minijinja builds the first expression's 100 MB string (and copies it into a value) before
    // it is written, and refused; nothing more: no 200 MB prompt, no tokenizing it (19.6 GB).
    assert!(r.peak_kib < 512 * 1024, "peak {} KiB", r.peak_kib);
}

#[test]
fn a_bomb_among_a_replay_cameras_files_is_a_counted_bad_frame_not_a_gigabyte() {
    let f = fixtures();
    // A second replay camera over a directory with one good frame and the PNG bomb.
    let d = Daemon::start_with(
        "[[cameras]]\nname = \"yard\"\nkind = \"replay\"\nsource = \"yard\"\nfps = 10.0\nmonitor = false\nprompt = \"x\"",
        |dir| {
            let yard = dir.join("yard");
            std::fs::create_dir_all(&yard).unwrap();
            std::fs::write(yard.join("a.jpg"), jpeg(64, 48, false)).unwrap();
            std::fs::copy(&f.png_bomb, yard.join("b.png")).unwrap();
            api_common::tiny_model()
        },
    );
    let yard = |d: &Daemon| {
        let (_, v) = d.get_json("/status");
        v["cameras"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "yard")
            .unwrap()
            .clone()
    };
    // Looping at 10 fps, the bomb comes round every other frame.
    d.wait_until(Duration::from_secs(20), |d| {
        yard(d)["decode_errors"].as_u64() >= Some(5)
    });
    let c = yard(&d);
    let e = c["last_error"].as_str().unwrap();
    assert!(
        e.contains("b.png") && e.contains("20000x20000") && !e.contains("JPEG"),
        "{e}"
    );
    assert!(c["frames"].as_u64() >= Some(3), "{c}");
    let (peak_kib, _) = d.memory_kib();
    eprintln!("daemon with a PNG bomb in a replay directory: peak RSS {peak_kib} KiB");
    assert!(peak_kib < PEAK_LIMIT_KIB, "peak {peak_kib} KiB");
}
