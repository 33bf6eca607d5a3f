//! Pixel conversions: what a camera hands us (YUYV, NV12, RGB24, MJPEG; PNG/JPEG files for
//! replay) → packed RGB8, the only layout a [`Frame`](super::Frame) carries.
//!
//! In: a byte buffer plus the geometry the driver reported (width, height, bytes per line).
//! Out: `width * height * 3` bytes, row-major, no padding — or a [`PixelError`] saying which
//! format, what size was expected and what arrived. Nothing here panics on bad input: a camera
//! can hand us a truncated or corrupt buffer at any time, and the capture loop counts it.
//!
//! ## YUV → RGB: BT.601, limited range, integer maths
//! UVC cameras send YCbCr with BT.601 matrix coefficients and "limited" (studio) range: Y in
//! 16..=235, Cb/Cr in 16..=240 centred on 128. The real-valued conversion to full-range RGB is
//!
//! ```text
//! R = 255/219·(Y−16)                      + 255/224·1.402·(Cr−128)
//! G = 255/219·(Y−16) − 255/224·0.344136·(Cb−128) − 255/224·0.714136·(Cr−128)
//! B = 255/219·(Y−16) + 255/224·1.772·(Cb−128)
//! ```
//!
//! We compute it in 16.16 fixed point: each coefficient × 65536, rounded (76309, 104597, 25675,
//! 53279, 132201), then `(sum + 32768) >> 16` and a clamp to 0..=255. Integer maths is exact and
//! identical on x86_64 and aarch64, so tests assert exact bytes. The common 8-bit version
//! (298/409/100/208/516 >> 8) is off by one from the real-valued result on 4.8 % of all
//! channel values; 16 bits is off by one on 0.018 % (only at near-ties of the rounding) —
//! measured over all 2²⁴ inputs. Chroma is shared by each horizontal pair (YUYV) or 2×2 block
//! (NV12) of pixels; we replicate it (no interpolation) — the model's own resize smooths far
//! more than chroma siting could matter.
//!
//! ## JPEG: one decoder for every pixel that reaches the model
//! MJPEG frames, replay files and uploads are decoded by [`crate::media::jpeg`], the libjpeg 9
//! arithmetic that ORT-GenAI's processor uses (checked by the pre-processing and token
//! conformance tests), so a camera frame reaches the model with exactly the pixels
//! `gemba ask --image` gives it for the same file. (A libjpeg-6b-style decoder such as zune-jpeg
//! moved a quarter of the demo frames' RGB samples, by up to 65 levels.) Many UVC cameras send
//! MJPEG frames *without* Huffman tables (the MJPEG convention: decoders must assume the JPEG
//! standard's example tables, ITU-T T.81 Annex K.3), so [`decode_jpeg`] inserts the standard
//! tables itself when a frame has none. The size is read from the frame header and checked
//! before any pixel buffer is allocated.

use std::borrow::Cow;

use thiserror::Error;

use crate::media::jpeg;

/// Everything that can be wrong with one buffer. Each variant names the format and the numbers.
#[derive(Debug, Error)]
pub enum PixelError {
    #[error("{format} frame {width}x{height}: buffer holds {actual} bytes, expected at least {expected}")]
    Truncated {
        format: &'static str,
        width: u32,
        height: u32,
        expected: usize,
        actual: usize,
    },
    #[error("{format} frame {width}x{height}: {what}")]
    BadGeometry {
        format: &'static str,
        width: u32,
        height: u32,
        what: String,
    },
    #[error("JPEG decode failed: {0}")]
    Jpeg(String),
    #[error("JPEG is {actual_w}x{actual_h}, larger than the allowed {max_w}x{max_h}")]
    JpegTooLarge {
        actual_w: u32,
        actual_h: u32,
        max_w: u32,
        max_h: u32,
    },
    #[error(
        "JPEG is {actual_w}x{actual_h}, the camera was negotiated at {expected_w}x{expected_h}"
    )]
    JpegSize {
        expected_w: u32,
        expected_h: u32,
        actual_w: u32,
        actual_h: u32,
    },
    /// An image file (replay, upload), decoded by [`crate::media::vision`]; names the file.
    #[error(transparent)]
    File(#[from] crate::media::vision::VisionError),
}

impl PixelError {
    /// A short, stable name for the kind of failure: capture loops log each cause once and count
    /// the rest, so the cause must not carry per-frame numbers.
    pub fn cause(&self) -> &'static str {
        match self {
            PixelError::Truncated { .. } => "truncated buffer",
            PixelError::BadGeometry { .. } => "bad geometry",
            PixelError::Jpeg(_) => "corrupt JPEG",
            PixelError::JpegTooLarge { .. } => "JPEG too large",
            PixelError::JpegSize { .. } => "JPEG size mismatch",
            PixelError::File(e) => {
                use crate::media::vision::VisionError as V;
                match e {
                    V::TooLarge { .. } => "image too large",
                    V::Empty { .. } => "empty image",
                    V::UnknownFormat { .. } => "not a PNG or JPEG",
                    V::Decode { format: "PNG", .. } => "corrupt PNG",
                    V::Decode { .. } => "corrupt JPEG",
                    V::Read { .. } => "unreadable file",
                    _ => "bad image",
                }
            }
        }
    }
}

/// A decoded image: packed RGB8, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

#[inline]
fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// One pixel, BT.601 limited range → full-range RGB (see the module docs for the formula).
#[inline]
pub fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    const HALF: i32 = 1 << 15;
    let c = 76309 * (i32::from(y) - 16);
    let d = i32::from(cb) - 128;
    let e = i32::from(cr) - 128;
    [
        clamp8((c + 104597 * e + HALF) >> 16),
        clamp8((c - 25675 * d - 53279 * e + HALF) >> 16),
        clamp8((c + 132201 * d + HALF) >> 16),
    ]
}

fn check_stride(
    format: &'static str,
    width: u32,
    height: u32,
    stride: usize,
    min: usize,
) -> Result<(), PixelError> {
    if width == 0 || height == 0 {
        return Err(PixelError::BadGeometry {
            format,
            width,
            height,
            what: "zero-sized frame".into(),
        });
    }
    if stride < min {
        return Err(PixelError::BadGeometry {
            format,
            width,
            height,
            what: format!("bytes per line {stride} is less than the {min} the width needs"),
        });
    }
    Ok(())
}

fn check_len(
    format: &'static str,
    width: u32,
    height: u32,
    expected: usize,
    actual: usize,
) -> Result<(), PixelError> {
    if actual < expected {
        return Err(PixelError::Truncated {
            format,
            width,
            height,
            expected,
            actual,
        });
    }
    Ok(())
}

/// YUYV 4:2:2 (V4L2 `YUYV`, a.k.a. YUY2): per pixel pair `Y0 Cb Y1 Cr`. `stride` is the driver's
/// bytes per line (≥ `2 * width`; some drivers pad rows).
pub fn yuyv_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, PixelError> {
    const F: &str = "YUYV";
    let (w, h) = (width as usize, height as usize);
    if width % 2 != 0 {
        return Err(PixelError::BadGeometry {
            format: F,
            width,
            height,
            what: "width must be even".into(),
        });
    }
    check_stride(F, width, height, stride, w * 2)?;
    // The last row need not carry its padding.
    check_len(F, width, height, stride * (h - 1) + w * 2, src.len())?;
    let mut out = vec![0u8; w * h * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let line = &src[row * stride..row * stride + w * 2];
        for (quad, px) in line.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
            let (y0, cb, y1, cr) = (quad[0], quad[1], quad[2], quad[3]);
            px[..3].copy_from_slice(&ycbcr_to_rgb(y0, cb, cr));
            px[3..].copy_from_slice(&ycbcr_to_rgb(y1, cb, cr));
        }
    }
    Ok(out)
}

/// NV12 4:2:0 (V4L2 `NV12`, single plane): `height` rows of Y, then `height / 2` rows of
/// interleaved `Cb Cr` pairs, both planes with the same `stride`.
pub fn nv12_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, PixelError> {
    const F: &str = "NV12";
    let (w, h) = (width as usize, height as usize);
    if width % 2 != 0 || height % 2 != 0 {
        return Err(PixelError::BadGeometry {
            format: F,
            width,
            height,
            what: "width and height must be even".into(),
        });
    }
    check_stride(F, width, height, stride, w)?;
    let uv_start = stride * h;
    check_len(
        F,
        width,
        height,
        uv_start + stride * (h / 2 - 1) + w,
        src.len(),
    )?;
    let mut out = vec![0u8; w * h * 3];
    for (row, dst) in out.chunks_exact_mut(w * 3).enumerate() {
        let y_line = &src[row * stride..row * stride + w];
        let uv_off = uv_start + (row / 2) * stride;
        let uv_line = &src[uv_off..uv_off + w];
        for ((ys, uv), px) in y_line
            .chunks_exact(2)
            .zip(uv_line.chunks_exact(2))
            .zip(dst.chunks_exact_mut(6))
        {
            px[..3].copy_from_slice(&ycbcr_to_rgb(ys[0], uv[0], uv[1]));
            px[3..].copy_from_slice(&ycbcr_to_rgb(ys[1], uv[0], uv[1]));
        }
    }
    Ok(out)
}

/// RGB24 (V4L2 `RGB3`): already what we want, minus any row padding.
pub fn rgb24_to_rgb(
    src: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<Vec<u8>, PixelError> {
    const F: &str = "RGB24";
    let (w, h) = (width as usize, height as usize);
    check_stride(F, width, height, stride, w * 3)?;
    check_len(F, width, height, stride * (h - 1) + w * 3, src.len())?;
    if stride == w * 3 {
        return Ok(src[..w * h * 3].to_vec());
    }
    let mut out = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        out.extend_from_slice(&src[row * stride..row * stride + w * 3]);
    }
    Ok(out)
}

/// Decode a JPEG (a file, or one MJPEG frame) to RGB with the model's decoder
/// ([`crate::media::jpeg`]). `max` bounds the size we accept, checked from the frame header
/// before any pixel is allocated, so a corrupt header cannot ask for gigabytes.
pub fn decode_jpeg(data: &[u8], max: (u32, u32)) -> Result<RgbImage, PixelError> {
    let data = with_huffman_tables(data);
    let jerr = |e: jpeg::JpegError| PixelError::Jpeg(e.to_string());
    let (w, h) = jpeg::read_dimensions(&data).map_err(jerr)?;
    // Sides above u32 cannot come from a 16-bit header field; saturate rather than wrap.
    let side = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let (width, height) = (side(w), side(h));
    if width > max.0 || height > max.1 {
        return Err(PixelError::JpegTooLarge {
            actual_w: width,
            actual_h: height,
            max_w: max.0,
            max_h: max.1,
        });
    }
    let (dw, dh, rgb) = jpeg::decode_rgb(&data, w.max(1) * h.max(1)).map_err(jerr)?;
    if (dw, dh) != (w, h) || rgb.len() != w * h * 3 {
        return Err(PixelError::Jpeg(format!(
            "decoder returned {} bytes for {dw}x{dh}, the header said {width}x{height}",
            rgb.len()
        )));
    }
    Ok(RgbImage { width, height, rgb })
}

/// One MJPEG frame from a camera negotiated at `width`×`height`: decodes and checks the size.
pub fn mjpeg_to_rgb(data: &[u8], width: u32, height: u32) -> Result<Vec<u8>, PixelError> {
    let img = decode_jpeg(data, (width, height))?;
    if img.width != width || img.height != height {
        return Err(PixelError::JpegSize {
            expected_w: width,
            expected_h: height,
            actual_w: img.width,
            actual_h: img.height,
        });
    }
    Ok(img.rgb)
}

/// Decode an image file (a replay camera's PNG or JPEG) by its content, with the decoder of
/// the model's own file path ([`crate::media::vision`]: PNG, and JPEG with libjpeg 9's
/// arithmetic), so a frame read from a file reaches the model with the same pixels as
/// `gemba ask --image` gives it. Images over `max_pixels` are refused from their header,
/// before any pixel buffer is allocated. `input` names the file in errors.
///
pub fn decode_image_file(
    data: &[u8],
    input: &str,
    max_pixels: usize,
) -> Result<RgbImage, PixelError> {
    let img = crate::media::vision::decode_image_within(data, input, max_pixels)?;
    let side = |v: usize| u32::try_from(v).expect("sides are at most 16384");
    Ok(RgbImage {
        width: side(img.width),
        height: side(img.height),
        rgb: img.rgb,
    })
}

// ITU-T T.81 Annex K.3 example Huffman tables, as one DHT segment payload: for each table
// (class/id byte, 16 code-length counts, symbols). MJPEG streams rely on these implicitly.
const DC_LUMA_BITS: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_CHROMA_BITS: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALS: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_LUMA_BITS: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_LUMA_VALS: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
    0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5,
    0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];
const AC_CHROMA_BITS: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_CHROMA_VALS: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26,
    0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
    0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
    0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
    0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
    0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
    0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8,
    0xf9, 0xfa,
];

const fn count_sum(bits: &[u8; 16]) -> usize {
    let mut i = 0;
    let mut s = 0;
    while i < 16 {
        s += bits[i] as usize;
        i += 1;
    }
    s
}
const _: () = assert!(count_sum(&DC_LUMA_BITS) == DC_VALS.len());
const _: () = assert!(count_sum(&DC_CHROMA_BITS) == DC_VALS.len());
const _: () = assert!(count_sum(&AC_LUMA_BITS) == AC_LUMA_VALS.len());
const _: () = assert!(count_sum(&AC_CHROMA_BITS) == AC_CHROMA_VALS.len());

/// The complete DHT marker segment (FF C4, length, four tables).
fn standard_dht_segment() -> Vec<u8> {
    let tables: [(u8, &[u8; 16], &[u8]); 4] = [
        (0x00, &DC_LUMA_BITS, &DC_VALS),
        (0x10, &AC_LUMA_BITS, &AC_LUMA_VALS),
        (0x01, &DC_CHROMA_BITS, &DC_VALS),
        (0x11, &AC_CHROMA_BITS, &AC_CHROMA_VALS),
    ];
    let payload: usize = tables.iter().map(|(_, b, v)| 1 + b.len() + v.len()).sum();
    let mut seg = Vec::with_capacity(4 + payload);
    seg.extend_from_slice(&[0xFF, 0xC4]);
    seg.extend_from_slice(&((payload + 2) as u16).to_be_bytes());
    for (class_id, bits, vals) in tables {
        seg.push(class_id);
        seg.extend_from_slice(bits);
        seg.extend_from_slice(vals);
    }
    seg
}

/// Walk the marker segments up to the first SOS; if no DHT came before it, return a copy with
/// the standard tables inserted just before SOS. Anything unparseable is returned unchanged
/// for the decoder to report.
fn with_huffman_tables(data: &[u8]) -> Cow<'_, [u8]> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Cow::Borrowed(data);
    }
    let mut pos = 2;
    while pos + 4 <= data.len() {
        if data[pos] != 0xFF {
            return Cow::Borrowed(data);
        }
        let marker = data[pos + 1];
        match marker {
            0xFF => {
                pos += 1; // fill byte
                continue;
            }
            0xC4 => return Cow::Borrowed(data), // has its own tables
            0xDA => {
                let mut out = Vec::with_capacity(data.len() + 432);
                out.extend_from_slice(&data[..pos]);
                out.extend_from_slice(&standard_dht_segment());
                out.extend_from_slice(&data[pos..]);
                return Cow::Owned(out);
            }
            0xD0..=0xD7 | 0x01 => pos += 2, // markers without a length
            _ => {
                let len = usize::from(u16::from_be_bytes([data[pos + 2], data[pos + 3]]));
                pos += 2 + len;
            }
        }
    }
    Cow::Borrowed(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real-valued BT.601 limited-range conversion in f64, rounded: the reference the
    /// integer path is held to.
    fn reference(y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (ky, kc) = (255.0 / 219.0, 255.0 / 224.0);
        let (c, d, e) = (
            f64::from(y) - 16.0,
            f64::from(cb) - 128.0,
            f64::from(cr) - 128.0,
        );
        let r = ky * c + kc * 1.402 * e;
        let g = ky * c - kc * 0.344136 * d - kc * 0.714136 * e;
        let b = ky * c + kc * 1.772 * d;
        [r, g, b].map(|v| (v + 0.5).floor().clamp(0.0, 255.0) as u8)
    }

    /// 100% colour bars as 8-bit BT.601 limited-range Y'CbCr (what a SMPTE bar generator
    /// emits), and the RGB they decode to. Quantising the bars to 8 bits moves four of them one
    /// level off pure colour (cyan's red 1, green's blue 1, magenta's blue 254, red's red 254) —
    /// in the real-valued conversion too (see `bars_agree_with_the_real_valued_reference`).
    const BARS: [((u8, u8, u8), [u8; 3]); 8] = [
        ((235, 128, 128), [255, 255, 255]), // white
        ((210, 16, 146), [255, 255, 0]),    // yellow
        ((170, 166, 16), [1, 255, 255]),    // cyan
        ((145, 54, 34), [0, 255, 1]),       // green
        ((106, 202, 222), [255, 0, 254]),   // magenta
        ((81, 90, 240), [254, 0, 0]),       // red
        ((41, 240, 110), [0, 0, 255]),      // blue
        ((16, 128, 128), [0, 0, 0]),        // black
    ];

    #[test]
    fn bars_agree_with_the_real_valued_reference() {
        for ((y, cb, cr), rgb) in BARS {
            assert_eq!(reference(y, cb, cr), rgb, "Y'CbCr {y},{cb},{cr}");
        }
    }

    /// Over a grid through the whole Y'CbCr cube the integer path is never more than one level
    /// from the real-valued reference, and off by one only at rounding near-ties.
    #[test]
    fn integer_path_tracks_the_reference_over_the_cube() {
        let (mut total, mut off_by_one) = (0u64, 0u64);
        for y in (0..=255u8).step_by(3) {
            for cb in (0..=255u8).step_by(3) {
                for cr in (0..=255u8).step_by(3) {
                    let (got, want) = (ycbcr_to_rgb(y, cb, cr), reference(y, cb, cr));
                    for (g, w) in got.iter().zip(want) {
                        total += 1;
                        match g.abs_diff(w) {
                            0 => {}
                            1 => off_by_one += 1,
                            d => panic!("Y'CbCr {y},{cb},{cr}: {got:?} vs {want:?} ({d} levels)"),
                        }
                    }
                }
            }
        }
        assert!(
            off_by_one * 1000 < total,
            "{off_by_one} of {total} channel values off by one"
        );
    }

    /// Bars 2 pixels wide each (one YUYV pair), `rows` tall, rows padded to `stride`.
    fn yuyv_bars(rows: usize, stride: usize) -> Vec<u8> {
        let mut buf = vec![0xEEu8; stride * rows];
        for r in 0..rows {
            for (i, ((y, cb, cr), _)) in BARS.iter().enumerate() {
                buf[r * stride + i * 4..r * stride + i * 4 + 4]
                    .copy_from_slice(&[*y, *cb, *y, *cr]);
            }
        }
        buf
    }

    fn expected_bars(rows: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows {
            for (_, rgb) in BARS {
                out.extend_from_slice(&rgb);
                out.extend_from_slice(&rgb);
            }
        }
        out
    }

    #[test]
    fn yuyv_colour_bars_are_exact() {
        // 16 pixels wide = 32 bytes; padded to 40 to exercise the stride.
        let rgb = yuyv_to_rgb(&yuyv_bars(3, 40), 16, 3, 40).unwrap();
        assert_eq!(rgb, expected_bars(3));
    }

    #[test]
    fn nv12_colour_bars_are_exact() {
        let (w, h, stride) = (16usize, 4usize, 20usize);
        let mut buf = vec![0u8; stride * h + stride * h / 2];
        for r in 0..h {
            for (i, ((y, _, _), _)) in BARS.iter().enumerate() {
                buf[r * stride + 2 * i] = *y;
                buf[r * stride + 2 * i + 1] = *y;
            }
        }
        for r in 0..h / 2 {
            for (i, ((_, cb, cr), _)) in BARS.iter().enumerate() {
                let o = stride * h + r * stride + 2 * i;
                buf[o] = *cb;
                buf[o + 1] = *cr;
            }
        }
        let rgb = nv12_to_rgb(&buf, w as u32, h as u32, stride).unwrap();
        assert_eq!(rgb, expected_bars(h));
    }

    /// A grey ramp over the whole Y range: inside 16..=235 the integer formula must equal the
    /// real-valued BT.601 expansion `(Y − 16) · 255 / 219`, rounded; outside it clamps.
    #[test]
    fn grey_gradient_matches_real_valued_bt601() {
        let width = 256u32;
        let mut yuyv = Vec::new();
        for pair in 0..128u32 {
            yuyv.extend_from_slice(&[(2 * pair) as u8, 128, (2 * pair + 1) as u8, 128]);
        }
        let rgb = yuyv_to_rgb(&yuyv, width, 1, 512).unwrap();
        for y in 0..256usize {
            let ideal = ((y as f64 - 16.0) * 255.0 / 219.0)
                .round()
                .clamp(0.0, 255.0) as u8;
            assert_eq!(rgb[y * 3..y * 3 + 3], [ideal; 3], "Y = {y}");
        }
    }

    #[test]
    fn chroma_is_shared_by_the_pair_and_the_block() {
        // Two different lumas under one chroma: both get the same hue offset.
        let rgb = yuyv_to_rgb(&[81, 90, 145, 240], 2, 1, 4).unwrap();
        assert_eq!(&rgb[..3], &ycbcr_to_rgb(81, 90, 240));
        assert_eq!(&rgb[3..], &ycbcr_to_rgb(145, 90, 240));
        // NV12: the second row uses the first chroma row.
        let nv12 = [81, 82, 83, 84, 90, 240];
        let rgb = nv12_to_rgb(&nv12, 2, 2, 2).unwrap();
        assert_eq!(&rgb[9..], &ycbcr_to_rgb(84, 90, 240));
    }

    #[test]
    fn rgb24_strips_row_padding() {
        let src = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12];
        assert_eq!(
            rgb24_to_rgb(&src, 2, 2, 8).unwrap(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        );
    }

    #[test]
    fn bad_buffers_are_errors_that_say_what_and_how_much() {
        let e = yuyv_to_rgb(&[0; 10], 4, 2, 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "YUYV frame 4x2: buffer holds 10 bytes, expected at least 16"
        );
        assert_eq!(e.cause(), "truncated buffer");
        let e = yuyv_to_rgb(&[0; 100], 3, 2, 8).unwrap_err();
        assert!(e.to_string().contains("width must be even"), "{e}");
        let e = nv12_to_rgb(&[0; 100], 4, 3, 4).unwrap_err();
        assert!(e.to_string().contains("must be even"), "{e}");
        let e = nv12_to_rgb(&[0; 11], 4, 2, 4).unwrap_err();
        assert!(
            matches!(
                e,
                PixelError::Truncated {
                    expected: 12,
                    actual: 11,
                    ..
                }
            ),
            "{e}"
        );
        let e = rgb24_to_rgb(&[0; 100], 4, 2, 6).unwrap_err();
        assert!(
            e.to_string()
                .contains("bytes per line 6 is less than the 12"),
            "{e}"
        );
        let e = yuyv_to_rgb(&[], 0, 0, 0).unwrap_err();
        assert!(e.to_string().contains("zero-sized"), "{e}");
    }

    /// A smooth test card: horizontal red ramp, vertical green ramp, constant blue.
    fn test_card(w: u32, h: u32) -> Vec<u8> {
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, 96]);
            }
        }
        rgb
    }

    pub(crate) fn encode_jpeg(rgb: &[u8], w: u32, h: u32, quality: u8) -> Vec<u8> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, quality)
            .encode(rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        out
    }

    fn errors(a: &[u8], b: &[u8]) -> (u8, f64) {
        let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        let mean = a
            .iter()
            .zip(b)
            .map(|(x, y)| f64::from(x.abs_diff(*y)))
            .sum::<f64>()
            / a.len() as f64;
        (max, mean)
    }

    /// Tolerance: JPEG at quality 95 with 4:2:0 chroma on a smooth card must stay within 4
    /// levels per channel and 1.0 on average (the bound set with zune-jpeg 0.5, which
    /// measured max 3, mean 0.50; libjpeg 9's scaled chroma stays within it).
    #[test]
    fn mjpeg_round_trip_within_tolerance() {
        let (w, h) = (64, 48);
        let card = test_card(w, h);
        let jpeg = encode_jpeg(&card, w, h, 95);
        let rgb = mjpeg_to_rgb(&jpeg, w, h).unwrap();
        assert_eq!(rgb.len(), card.len());
        let (max, mean) = errors(&rgb, &card);
        assert!(
            max <= 4 && mean <= 1.0,
            "max abs error {max}, mean {mean:.3}"
        );
    }

    /// UVC MJPEG frames often carry no DHT segment; with the standard tables inserted the frame
    /// must decode to exactly what the same frame with its tables decodes to.
    #[test]
    fn mjpeg_without_huffman_tables_decodes_identically() {
        let (w, h) = (32, 16);
        let jpeg = encode_jpeg(&test_card(w, h), w, h, 90);
        let mut stripped = Vec::new();
        let mut pos = 2;
        stripped.extend_from_slice(&jpeg[..2]);
        let mut removed = 0;
        loop {
            let marker = jpeg[pos + 1];
            if marker == 0xDA {
                stripped.extend_from_slice(&jpeg[pos..]);
                break;
            }
            let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
            if marker == 0xC4 {
                removed += 1;
            } else {
                stripped.extend_from_slice(&jpeg[pos..pos + 2 + len]);
            }
            pos += 2 + len;
        }
        assert!(removed > 0, "the encoder wrote no DHT to strip");
        let with = mjpeg_to_rgb(&jpeg, w, h).unwrap();
        let without = mjpeg_to_rgb(&stripped, w, h).unwrap();
        assert_eq!(with, without);
    }

    #[test]
    fn mjpeg_of_the_wrong_size_or_garbage_is_an_error() {
        let jpeg = encode_jpeg(&test_card(16, 16), 16, 16, 90);
        let e = mjpeg_to_rgb(&jpeg, 16, 8).unwrap_err();
        assert!(matches!(e, PixelError::JpegTooLarge { .. }), "{e}");
        let e = mjpeg_to_rgb(&jpeg, 32, 32).unwrap_err();
        assert_eq!(
            e.to_string(),
            "JPEG is 16x16, the camera was negotiated at 32x32"
        );
        // A truncated scan may decode (padded with zeros) or fail; either way, no panic.
        let _ = mjpeg_to_rgb(&jpeg[..jpeg.len() / 3], 16, 16);
        // A header cut short must fail.
        let e = mjpeg_to_rgb(&jpeg[..20], 16, 16).unwrap_err();
        assert_eq!(e.cause(), "corrupt JPEG");
        assert_eq!(
            mjpeg_to_rgb(b"not a jpeg", 16, 16).unwrap_err().cause(),
            "corrupt JPEG"
        );
    }

    #[test]
    fn an_mjpeg_frame_claiming_a_huge_size_is_refused_from_its_header() {
        let (w, h) = (16u32, 16u32);
        let claiming = |side: u16| {
            let mut jpeg = encode_jpeg(&test_card(w, h), w, h, 90);
            let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).unwrap();
            jpeg[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
            jpeg[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
            jpeg
        };
        // Over the negotiated size: our check, between the header and any pixel buffer.
        let e = mjpeg_to_rgb(&claiming(8000), w, h).unwrap_err();
        assert!(
            matches!(
                e,
                PixelError::JpegTooLarge {
                    actual_w: 8000,
                    actual_h: 8000,
                    ..
                }
            ),
            "{e}"
        );
        // Far over any decoder's limit: refused from the header, the size named.
        let e = mjpeg_to_rgb(&claiming(60000), w, h).unwrap_err();
        assert!(e.to_string().contains("60000"), "{e}");
    }

    /// The one JPEG policy: a camera's MJPEG frame reaches the model with exactly the pixels
    /// `gemba ask --image` (the model's own file path, checked against ORT-GenAI) decodes from
    /// the same bytes — on the demo's 4:2:0 frames and a photo fixture, where a libjpeg-6b-style
    /// decoder differs in a quarter to a half of the samples.
    #[test]
    fn mjpeg_frames_decode_exactly_as_the_models_file_path() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in [
            "models/demo/frames/press-2_00.jpg",
            "models/demo/frames/belt-1_03.jpg",
            "tests/fixtures/scene_420.jpg",
        ] {
            let bytes = std::fs::read(repo.join(file)).unwrap();
            let model = crate::media::vision::decode_image(&bytes, file).unwrap();
            let (w, h) = (model.width as u32, model.height as u32);
            let camera = mjpeg_to_rgb(&bytes, w, h).unwrap();
            assert!(
                camera == model.rgb,
                "{file}: MJPEG pixels differ from the model's"
            );
            let replay = decode_image_file(&bytes, file, model.width * model.height).unwrap();
            assert!(replay.rgb == model.rgb, "{file}: replay pixels differ");
        }
    }

    #[test]
    fn png_files_decode_to_rgb() {
        let (w, h) = (5u32, 3u32);
        let card = test_card(w, h);
        for (colour, channels) in [
            (png::ColorType::Rgb, 3usize),
            (png::ColorType::Rgba, 4),
            (png::ColorType::Grayscale, 1),
        ] {
            let mut pixels = Vec::new();
            for px in card.chunks_exact(3) {
                match channels {
                    1 => pixels.push(px[1]),
                    3 => pixels.extend_from_slice(px),
                    _ => pixels.extend_from_slice(&[px[0], px[1], px[2], 7]),
                }
            }
            let mut file = Vec::new();
            {
                let mut enc = png::Encoder::new(&mut file, w, h);
                enc.set_color(colour);
                enc.set_depth(png::BitDepth::Eight);
                enc.write_header()
                    .unwrap()
                    .write_image_data(&pixels)
                    .unwrap();
            }
            let img = decode_image_file(&file, "card.png", 64 * 64).unwrap();
            assert_eq!((img.width, img.height), (w, h));
            let expected: Vec<u8> = match channels {
                1 => card.chunks_exact(3).flat_map(|p| [p[1]; 3]).collect(),
                _ => card.clone(),
            };
            assert_eq!(img.rgb, expected, "{colour:?}");
            // A PNG's errors say PNG, never JPEG, and name the file.
            let e = decode_image_file(&file[..file.len() - 20], "cut.png", 64 * 64).unwrap_err();
            assert_eq!(e.cause(), "corrupt PNG");
            let msg = e.to_string();
            assert!(
                msg.contains("PNG") && msg.contains("cut.png") && !msg.contains("JPEG"),
                "{msg}"
            );
            // Over the pixel budget: refused from the header.
            let e = decode_image_file(&file, "card.png", 14).unwrap_err();
            assert_eq!(e.cause(), "image too large");
            assert!(!e.to_string().contains("JPEG"), "{e}");
        }
        let e = decode_image_file(b"GIF89a", "x.gif", 64 * 64).unwrap_err();
        assert_eq!(e.cause(), "not a PNG or JPEG");
    }

    /// A stable-toolchain stand-in for `fuzz/` (same function, same checks as the
    /// `jpeg_to_rgb` target): the committed seed JPEGs, mutated deterministically (bit flips,
    /// byte overwrites with marker-ish values, truncation, duplicated and deleted spans) must
    /// each decode to a consistent image or an error — never a panic.
    #[test]
    fn jpeg_decoder_survives_mutated_inputs() {
        let seeds_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&seeds_dir)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert!(
            seeds.len() >= 4,
            "seed JPEGs missing from {}",
            seeds_dir.display()
        );
        seeds.push(encode_jpeg(&test_card(40, 30), 40, 30, 70));
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let (mut decoded, mut rejected) = (0, 0);
        for round in 0..3000 {
            let mut data = seeds[round % seeds.len()].clone();
            for _ in 0..1 + next(4) {
                let len = data.len();
                match next(6) {
                    0 => data[next(len)] ^= 1 << next(8),
                    1 => {
                        data[next(len)] = [0xFF, 0x00, 0xD8, 0xD9, 0xDA, 0xC4, 0xDB, 0xC0][next(8)]
                    }
                    2 => data.truncate(next(len) + 1),
                    3 => {
                        let (a, n) = (next(len), 1 + next(64));
                        let span: Vec<u8> = data[a..(a + n).min(len)].to_vec();
                        let at = next(len);
                        data.splice(at..at, span);
                    }
                    4 => {
                        let a = next(len);
                        let b = (a + 1 + next(32)).min(len);
                        data.drain(a..b);
                    }
                    _ => {
                        // Size fields are where decoders go wrong: poke the bytes after a marker.
                        if let Some(p) = (0..len.saturating_sub(4))
                            .map(|_| next(len - 4))
                            .find(|&p| data[p] == 0xFF)
                        {
                            data[p + 2 + next(2)] = next(256) as u8;
                        }
                    }
                }
                if data.is_empty() {
                    data.push(0xFF);
                }
            }
            match decode_jpeg(&data, (512, 512)) {
                Ok(img) => {
                    assert_eq!(img.rgb.len(), img.width as usize * img.height as usize * 3);
                    decoded += 1;
                }
                Err(_) => rejected += 1,
            }
            let _ = mjpeg_to_rgb(&data, 64, 48).map(|rgb| assert_eq!(rgb.len(), 64 * 48 * 3));
        }
        // Both outcomes occur: the mutations are neither all harmless nor all fatal.
        assert!(
            decoded > 100 && rejected > 100,
            "decoded {decoded}, rejected {rejected}"
        );
    }
}
