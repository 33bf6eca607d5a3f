//! Fuzz the MJPEG / JPEG → RGB path a camera frame or replay file takes: any bytes must give
//! an image of consistent size or an error, never a panic, hang or huge allocation.
#![no_main]

use gemba::capture::pixel::{decode_jpeg, mjpeg_to_rgb};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Bounded like a replay file would be, but small enough to keep the fuzzer fast.
    if let Ok(img) = decode_jpeg(data, (512, 512)) {
        assert_eq!(img.rgb.len(), img.width as usize * img.height as usize * 3);
        assert!(img.width <= 512 && img.height <= 512);
    }
    // The camera path: a fixed negotiated size.
    if let Ok(rgb) = mjpeg_to_rgb(data, 64, 48) {
        assert_eq!(rgb.len(), 64 * 48 * 3);
    }
});
