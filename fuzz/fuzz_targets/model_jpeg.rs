//! Fuzz the JPEG decoder the model's image pre-processing uses (libjpeg 9 arithmetic, written for
//! conformance with ORT-GenAI): any bytes give a consistent image or an error, never a panic,
//! hang or allocation past the pixel bound.
#![no_main]

use gemba::media::jpeg::decode_rgb;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((w, h, rgb)) = decode_rgb(data, 512 * 512) {
        assert_eq!(rgb.len(), w * h * 3);
        assert!(w * h <= 512 * 512);
    }
});
