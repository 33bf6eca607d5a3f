//! phi4mm image pre-processing: RGB pixels → `pixel_values`, `image_attention_mask`,
//! `image_sizes`, `num_img_tokens`, exactly as onnxruntime-extensions' `Phi4VisionDynamicPreprocess`
//! + `Rescale` + `Normalize` + `Phi4VisionProcessor` produce them for ORT-GenAI.
//!
//! The steps, per image:
//! 1. **Crop grid** ([`plan_crops`]): `ceil(W/448) × ceil(H/448)` crops, or — past `dynamic_hd`
//!    crops — the allowed grid whose aspect ratio is closest. All arithmetic in `f32`, as the
//!    reference does it, because the truncations decide the resized size.
//! 2. **Resize** the 8-bit image to fit the grid, keeping its aspect ratio (Pillow bilinear with
//!    antialiasing, [`super::resample`]), pad right/bottom with white.
//! 3. **Rescale and normalise** to `f32`: `(v · 1/255 − mean) / std`.
//! 4. **Global view**: the whole normalised HD image resized to 448² with Pillow's bicubic on
//!    floats, placed first; then the crops, row-major, channel-first.
//! 5. **Attention mask**: 32×32 per crop (one cell per 14 px), padding zeroed; the global view's
//!    mask is all ones. `num_img_tokens = 256 + 1 + Σ mask[::2, ::2] + Σ mask[::2, 0] + 16`.
//!
//! Several images stack into one batch ([`ImageBatch::stack`]) padded to the largest crop count;
//! padded crops get an all-ones mask (the reference's `phi4-vision-aligner`).
//!
//! In: PNG/JPEG bytes or files ([`decode_image`], [`load_image`]) or decoded RGB8 frames.
//! Out: [`ImageInput`] per image, [`ImageBatch`] for a prompt. Images larger than
//! [`MAX_IMAGE_SIDE`] per side or [`MAX_IMAGE_PIXELS`] in all are refused from the header,
//! before any pixel is decoded (the reference's own limits), so memory stays bounded.

use std::path::{Path, PathBuf};

use super::jpeg;
use super::resample::{resize_f32, resize_u8, Filter};

/// Largest accepted width or height (onnxruntime-extensions' decoder limit).
pub const MAX_IMAGE_SIDE: usize = 16_384;
/// Largest accepted pixel count (onnxruntime-extensions' decoder limit).
pub const MAX_IMAGE_PIXELS: usize = 100_000_000;

/// One mask cell covers a 14 × 14 pixel patch.
const PATCH: usize = 14;
/// Resized images narrower or shorter than this are refused, as the reference does.
const MIN_RESIZED_SIDE: usize = 10;

/// Errors of image decoding and pre-processing; each names the input it is about.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("reading image {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("image {input}: not a PNG or JPEG (starts with {magic})")]
    UnknownFormat { input: String, magic: String },
    #[error("image {input}: cannot decode {format}: {detail}")]
    Decode {
        input: String,
        format: &'static str,
        detail: String,
    },
    #[error("image {input}: {width}x{height} has no pixels")]
    Empty {
        input: String,
        width: usize,
        height: usize,
    },
    #[error(
        "image {input}: {width}x{height} is larger than the {MAX_IMAGE_SIDE} px per side / \
         {max_pixels} px limit (refused from its header, before decoding)"
    )]
    TooLarge {
        input: String,
        width: usize,
        height: usize,
        max_pixels: usize,
    },
    #[error(
        "image {input}: RGB buffer holds {actual} bytes but {width}x{height}x3 needs {expected}"
    )]
    BufferSize {
        input: String,
        width: usize,
        height: usize,
        expected: usize,
        actual: usize,
    },
    #[error(
        "image {input}: {width}x{height} has too extreme an aspect ratio: it would be resized to \
         {resized_width}x{resized_height} for a {cols}x{rows} crop grid (each side must be ≥ 10 px)"
    )]
    ExtremeAspect {
        input: String,
        width: usize,
        height: usize,
        resized_width: usize,
        resized_height: usize,
        cols: usize,
        rows: usize,
    },
}

/// Image pre-processing parameters (from the bundle's `vision_processor.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionSettings {
    /// Most crops per image (`dynamic_hd`, 36 for Phi-4-multimodal).
    pub max_crops: usize,
    /// Crop and global-view side in pixels (`dyhd_base_resolution`, 448); a multiple of 28.
    pub base_resolution: usize,
    /// Multiplier from 8-bit values to floats (`rescale_factor`, 1/255).
    pub rescale_factor: f32,
    /// Per-channel mean subtracted after rescaling.
    pub mean: [f32; 3],
    /// Per-channel divisor after the mean.
    pub std: [f32; 3],
}

impl Default for VisionSettings {
    fn default() -> Self {
        VisionSettings {
            max_crops: 36,
            base_resolution: 448,
            rescale_factor: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }
}

impl VisionSettings {
    /// Mask cells per crop side (`base_resolution / 14`).
    pub fn mask_resolution(&self) -> usize {
        self.base_resolution / PATCH
    }
}

/// A decoded image: `height` rows of `width` RGB8 pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// How an image is laid onto crops: the grid, the aspect-preserving resize, the white padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropPlan {
    /// Crops across.
    pub cols: usize,
    /// Crops down.
    pub rows: usize,
    /// Width after the aspect-preserving resize (before padding).
    pub resized_width: usize,
    /// Height after the aspect-preserving resize (before padding).
    pub resized_height: usize,
    /// White columns added on the right.
    pub pad_right: usize,
    /// White rows added at the bottom.
    pub pad_bottom: usize,
}

impl CropPlan {
    pub fn crops(&self) -> usize {
        self.cols * self.rows
    }
}

/// Choose the crop grid and resized size for a `width × height` image, with the reference's
/// `f32` arithmetic and truncations.
pub fn plan_crops(
    width: usize,
    height: usize,
    settings: &VisionSettings,
    input: &str,
) -> Result<CropPlan, VisionError> {
    if width == 0 || height == 0 {
        return Err(VisionError::Empty {
            input: input.to_owned(),
            width,
            height,
        });
    }
    let base = settings.base_resolution;
    let (w, h) = (width as f32, height as f32);
    let mut cols = (w / base as f32).ceil() as usize;
    let mut rows = (h / base as f32).ceil() as usize;
    if cols * rows > settings.max_crops {
        (cols, rows) = closest_grid(width, height, settings.max_crops, base);
    }
    let (target_w, target_h) = (base * cols, base * rows);
    let ratio_w = target_w as f32 / w;
    let ratio_h = target_h as f32 / h;
    let (resized_width, resized_height) = if ratio_w < ratio_h {
        (target_w, (h * ratio_w) as usize)
    } else {
        ((w * ratio_h) as usize, target_h)
    };
    if resized_width.min(target_w) < MIN_RESIZED_SIDE
        || resized_height.min(target_h) < MIN_RESIZED_SIDE
    {
        return Err(VisionError::ExtremeAspect {
            input: input.to_owned(),
            width,
            height,
            resized_width,
            resized_height,
            cols,
            rows,
        });
    }
    Ok(CropPlan {
        cols,
        rows,
        resized_width,
        resized_height,
        pad_right: target_w - resized_width,
        pad_bottom: target_h - resized_height,
    })
}

/// The allowed grid (`cols · rows ≤ max_crops`) whose aspect ratio is closest to the image's;
/// on a tie, a larger grid wins when the image covers more than half of its area.
fn closest_grid(width: usize, height: usize, max_crops: usize, base: usize) -> (usize, usize) {
    let aspect = width as f32 / height as f32;
    let mut grids: Vec<(usize, usize)> = (1..=max_crops)
        .flat_map(|i| (1..=max_crops).map(move |j| (i, j)))
        .filter(|(i, j)| i * j <= max_crops)
        .collect();
    grids.sort_by_key(|(i, j)| i * j);
    let area = (width * height) as f64;
    let mut best_diff = f32::INFINITY;
    let mut best = (1, 1);
    for (i, j) in grids {
        let diff = (aspect - i as f32 / j as f32).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (i, j);
        } else if diff == best_diff && area > 0.5 * (base * base * i * j) as f64 {
            best = (i, j);
        }
    }
    best
}

/// One image, pre-processed: the global view and its crops.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInput {
    /// `[1 + crops, 3, base, base]`, global view first, channel-first.
    pub pixel_values: Vec<f32>,
    /// `[1 + crops, mask, mask]` with 1 for image and 0 for padding.
    pub attention_mask: Vec<f32>,
    /// `[height, width]` of the padded HD image (the grid's size in pixels).
    pub image_size: [i64; 2],
    /// How many `<|image|>` tokens this image takes in the prompt.
    pub num_img_tokens: i64,
    /// Crops, excluding the global view.
    pub crops: usize,
    pub plan: CropPlan,
}

/// Pre-process one RGB8 image (`height` rows of `width` pixels, 3 bytes each).
pub fn preprocess_rgb(
    settings: &VisionSettings,
    width: usize,
    height: usize,
    rgb: &[u8],
    input: &str,
) -> Result<ImageInput, VisionError> {
    check_dimensions(width, height, MAX_IMAGE_PIXELS, input)?;
    let expected = width * height * 3;
    if rgb.len() != expected {
        return Err(VisionError::BufferSize {
            input: input.to_owned(),
            width,
            height,
            expected,
            actual: rgb.len(),
        });
    }
    let plan = plan_crops(width, height, settings, input)?;
    let base = settings.base_resolution;
    let (hd_w, hd_h) = (plan.cols * base, plan.rows * base);

    // 2. Aspect-preserving bilinear resize of the 8-bit image, then white padding.
    let resized = resize_u8(
        rgb,
        width,
        height,
        3,
        plan.resized_width,
        plan.resized_height,
        Filter::Bilinear,
    );
    // 3. Rescale + normalise into the padded HD canvas, one plane per channel (the layout the
    //    crops and the global view take); padding is white (255) before scaling.
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| {
            (v as f32 * settings.rescale_factor - settings.mean[c]) / settings.std[c]
        })
    });
    let hd_plane = hd_w * hd_h;
    let mut hd = vec![0.0f32; 3 * hd_plane];
    for (c, table) in lut.iter().enumerate() {
        let plane = &mut hd[c * hd_plane..(c + 1) * hd_plane];
        for (y, row) in plane.chunks_exact_mut(hd_w).enumerate() {
            if y < plan.resized_height {
                let src = &resized[y * plan.resized_width * 3..(y + 1) * plan.resized_width * 3];
                for (out, px) in row.iter_mut().zip(src.chunks_exact(3)) {
                    *out = table[usize::from(px[c])];
                }
                row[plan.resized_width..].fill(table[255]);
            } else {
                row.fill(table[255]);
            }
        }
    }
    drop(resized);

    // 4. Global view (bicubic on floats, each plane on its own as the reference does), then the
    //    crops, row-major; all channel-first.
    let crops = plan.crops();
    let mut pixel_values = Vec::with_capacity((1 + crops) * 3 * base * base);
    for c in 0..3 {
        let plane = &hd[c * hd_plane..(c + 1) * hd_plane];
        pixel_values.extend(resize_f32(
            plane,
            hd_w,
            hd_h,
            1,
            base,
            base,
            Filter::Bicubic,
        ));
    }
    for r in 0..plan.rows {
        for col in 0..plan.cols {
            for c in 0..3 {
                for y in r * base..(r + 1) * base {
                    let at = c * hd_plane + y * hd_w + col * base;
                    pixel_values.extend_from_slice(&hd[at..at + base]);
                }
            }
        }
    }
    drop(hd);

    // 5. Attention mask over the HD grid: one cell per 14 px, padding cells zeroed.
    let m = settings.mask_resolution();
    let (mask_w, mask_h) = (m * plan.cols, m * plan.rows);
    let zero_cols = if plan.pad_right >= PATCH {
        plan.pad_right / PATCH
    } else {
        0
    };
    let zero_rows = if plan.pad_bottom >= PATCH {
        plan.pad_bottom / PATCH
    } else {
        0
    };
    let cell = |y: usize, x: usize| -> i64 {
        i64::from(y < mask_h.saturating_sub(zero_rows) && x < mask_w.saturating_sub(zero_cols))
    };
    let num_img_tokens = 256
        + 1
        + (0..mask_h)
            .step_by(2)
            .map(|y| (0..mask_w).step_by(2).map(|x| cell(y, x)).sum::<i64>())
            .sum::<i64>()
        + (0..mask_h).step_by(2).map(|y| cell(y, 0)).sum::<i64>()
        + 16;
    let mut attention_mask = vec![1.0f32; m * m];
    for r in 0..plan.rows {
        for c in 0..plan.cols {
            for y in 0..m {
                for x in 0..m {
                    attention_mask.push(cell(r * m + y, c * m + x) as f32);
                }
            }
        }
    }

    Ok(ImageInput {
        pixel_values,
        attention_mask,
        image_size: [hd_h as i64, hd_w as i64],
        num_img_tokens,
        crops,
        plan,
    })
}

fn check_dimensions(
    width: usize,
    height: usize,
    max_pixels: usize,
    input: &str,
) -> Result<(), VisionError> {
    if width == 0 || height == 0 {
        return Err(VisionError::Empty {
            input: input.to_owned(),
            width,
            height,
        });
    }
    let max_pixels = max_pixels.min(MAX_IMAGE_PIXELS);
    if width > MAX_IMAGE_SIDE
        || height > MAX_IMAGE_SIDE
        || width.saturating_mul(height) > max_pixels
    {
        return Err(VisionError::TooLarge {
            input: input.to_owned(),
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// The images of one prompt, stacked and padded to the largest crop count.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    /// `[images, 1 + max_crops, 3, base, base]`; padded crops are zeros.
    pub pixel_values: Vec<f32>,
    /// `[images, 1 + max_crops, mask, mask]`; padded crops are all ones.
    pub attention_mask: Vec<f32>,
    /// `[images, 2]` as `(height, width)`.
    pub image_sizes: Vec<i64>,
    /// `[images, 1]`.
    pub num_img_tokens: Vec<i64>,
    pub images: usize,
    /// `1 + max_crops`.
    pub views: usize,
    pub base_resolution: usize,
    pub mask_resolution: usize,
}

impl ImageBatch {
    /// Stack images as the reference's `StackTensors` + `phi4-vision-aligner` do: zero-pad each
    /// image to the largest view count, then give every view whose first mask cell is 0 an
    /// all-ones mask.
    pub fn stack<I: std::borrow::Borrow<ImageInput>>(
        images: &[I],
        settings: &VisionSettings,
    ) -> ImageBatch {
        let images: Vec<&ImageInput> = images.iter().map(|i| i.borrow()).collect();
        let base = settings.base_resolution;
        let m = settings.mask_resolution();
        let views = images.iter().map(|i| i.crops + 1).max().unwrap_or(0);
        let (view_px, view_mask) = (3 * base * base, m * m);
        let mut pixel_values = vec![0.0f32; images.len() * views * view_px];
        let mut attention_mask = vec![0.0f32; images.len() * views * view_mask];
        for (i, img) in images.iter().enumerate() {
            let px = &mut pixel_values[i * views * view_px..];
            px[..img.pixel_values.len()].copy_from_slice(&img.pixel_values);
            let mk = &mut attention_mask[i * views * view_mask..(i + 1) * views * view_mask];
            mk[..img.attention_mask.len()].copy_from_slice(&img.attention_mask);
            for view in mk.chunks_exact_mut(view_mask) {
                if view[0] <= 0.0 {
                    view.fill(1.0);
                }
            }
        }
        ImageBatch {
            pixel_values,
            attention_mask,
            image_sizes: images.iter().flat_map(|i| i.image_size).collect(),
            num_img_tokens: images.iter().map(|i| i.num_img_tokens).collect(),
            images: images.len(),
            views,
            base_resolution: base,
            mask_resolution: m,
        }
    }
}

/// Read and decode a PNG or JPEG file.
pub fn load_image(path: &Path) -> Result<DecodedImage, VisionError> {
    let bytes = std::fs::read(path).map_err(|err| VisionError::Read {
        path: path.to_owned(),
        err,
    })?;
    decode_image(&bytes, &path.display().to_string())
}

/// Decode PNG or JPEG bytes to RGB8, refusing oversized images from the header alone.
///
/// Like the reference: 16-bit PNG samples keep their high byte, palettes and grey expand to
/// RGB, alpha is dropped (not composited); JPEG is decoded with libjpeg 9's arithmetic
/// ([`super::jpeg`]) to RGB.
pub fn decode_image(bytes: &[u8], input: &str) -> Result<DecodedImage, VisionError> {
    decode_image_within(bytes, input, MAX_IMAGE_PIXELS)
}

/// What an image file's header says, read without decoding any pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// `"PNG"` or `"JPEG"`.
    pub format: &'static str,
    pub width: usize,
    pub height: usize,
}

/// The format and size of PNG or JPEG bytes, from the PNG's IHDR chunk or the JPEG's frame
/// header: what a caller checks against its budget before it decodes (or queues) anything.
pub fn read_header(bytes: &[u8], input: &str) -> Result<ImageHeader, VisionError> {
    if bytes.starts_with(PNG_SIGNATURE) {
        // IHDR is always the first chunk: signature (8), length (4), "IHDR" (4), width, height.
        match bytes.get(12..24) {
            Some(ihdr) if &ihdr[..4] == b"IHDR" => {
                let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                Ok(ImageHeader {
                    format: "PNG",
                    width: be(&ihdr[4..8]),
                    height: be(&ihdr[8..12]),
                })
            }
            _ => Err(VisionError::Decode {
                input: input.to_owned(),
                format: "PNG",
                detail: "missing IHDR header".into(),
            }),
        }
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        let (width, height) = jpeg::read_dimensions(bytes).map_err(|e| VisionError::Decode {
            input: input.to_owned(),
            format: "JPEG",
            detail: e.to_string(),
        })?;
        Ok(ImageHeader {
            format: "JPEG",
            width,
            height,
        })
    } else {
        let magic = bytes
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        let magic = if magic.is_empty() {
            "nothing (empty file)".to_owned()
        } else {
            magic
        };
        Err(VisionError::UnknownFormat {
            input: input.to_owned(),
            magic,
        })
    }
}

/// [`decode_image`] with a pixel budget below the reference's: images with more than
/// `max_pixels` pixels are refused from their header, before any pixel buffer exists. Memory
/// while decoding stays near `3 × width × height` bytes (PNG rows are converted one at a time).
pub fn decode_image_within(
    bytes: &[u8],
    input: &str,
    max_pixels: usize,
) -> Result<DecodedImage, VisionError> {
    let header = read_header(bytes, input)?;
    check_dimensions(header.width, header.height, max_pixels, input)?;
    match header.format {
        "PNG" => decode_png(bytes, input, max_pixels),
        _ => decode_jpeg(bytes, input, max_pixels),
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn decode_png(bytes: &[u8], input: &str, max_pixels: usize) -> Result<DecodedImage, VisionError> {
    let err = |detail: String| VisionError::Decode {
        input: input.to_owned(),
        format: "PNG",
        detail,
    };
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| err(e.to_string()))?;
    let (width, height) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    // The decoder's own view of the header, checked again before anything is allocated.
    check_dimensions(width, height, max_pixels, input)?;
    let (color, depth) = reader.output_color_type();
    let channels = match color {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(err("palette was not expanded".into())),
    };
    if depth != png::BitDepth::Eight {
        return Err(err(format!(
            "unexpected bit depth {depth:?} after expansion"
        )));
    }
    let mut rgb = Vec::with_capacity(width * height * 3);
    let push_row = |row: &[u8], rgb: &mut Vec<u8>| -> Result<(), VisionError> {
        let px = row
            .get(..width * channels)
            .ok_or_else(|| err("short row".into()))?;
        for px in px.chunks_exact(channels) {
            match channels {
                1 | 2 => rgb.extend_from_slice(&[px[0]; 3]),
                _ => rgb.extend_from_slice(&px[..3]),
            }
        }
        Ok(())
    };
    if reader.info().interlaced {
        // Adam7 passes arrive as partial rows: de-interlace into the whole frame first.
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| err("image too large to buffer".into()))?;
        let mut buf = vec![0u8; size];
        let frame = reader
            .next_frame(&mut buf)
            .map_err(|e| err(e.to_string()))?;
        for row in buf[..frame.buffer_size()].chunks_exact(frame.line_size) {
            push_row(row, &mut rgb)?;
        }
    } else {
        // Row by row into RGB: no second, full-size buffer in the decoder's layout (an RGBA
        // image would otherwise need 4 + 3 bytes per pixel at once).
        while let Some(row) = reader.next_row().map_err(|e| err(e.to_string()))? {
            push_row(row.data(), &mut rgb)?;
        }
    }
    if rgb.len() != width * height * 3 {
        return Err(err(format!(
            "the image data ends after {} of {height} rows",
            rgb.len() / (width * 3)
        )));
    }
    Ok(DecodedImage { width, height, rgb })
}

fn decode_jpeg(bytes: &[u8], input: &str, max_pixels: usize) -> Result<DecodedImage, VisionError> {
    let err = |e: jpeg::JpegError| VisionError::Decode {
        input: input.to_owned(),
        format: "JPEG",
        detail: e.to_string(),
    };
    let (width, height, rgb) =
        jpeg::decode_rgb(bytes, max_pixels.min(MAX_IMAGE_PIXELS)).map_err(err)?;
    Ok(DecodedImage { width, height, rgb })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> VisionSettings {
        VisionSettings::default()
    }

    #[test]
    fn crop_grid_table() {
        // (width, height) → (cols, rows, resized_w, resized_h, pad_right, pad_bottom)
        let cases = [
            ((448, 448), (1, 1, 448, 448, 0, 0)),
            ((500, 300), (2, 1, 746, 448, 150, 0)),
            ((300, 500), (1, 2, 448, 746, 0, 150)),
            ((10, 7), (1, 1, 448, 313, 0, 135)),
            ((1, 1), (1, 1, 448, 448, 0, 0)),
            ((1920, 1080), (5, 3, 2240, 1260, 0, 84)),
            // 45 × 45 crops by ceil → past 36: closest grid to 1:1 is 6×6.
            ((20000, 20000), (6, 6, 2688, 2688, 0, 0)),
            // A 1000:1 strip: closest allowed grid is 36×1.
            ((16000, 16), (36, 1, 16128, 16, 0, 432)),
        ];
        for ((w, h), (cols, rows, rw, rh, pr, pb)) in cases {
            let p = plan_crops(w, h, &settings(), "t").unwrap();
            assert_eq!(
                (
                    p.cols,
                    p.rows,
                    p.resized_width,
                    p.resized_height,
                    p.pad_right,
                    p.pad_bottom
                ),
                (cols, rows, rw, rh, pr, pb),
                "{w}x{h}"
            );
        }
    }

    #[test]
    fn closest_grid_prefers_larger_grid_on_ties_when_image_is_big() {
        // 2:1 ties between (2,1), (4,2), (6,3), (8,4): each later one wins while the image
        // covers more than half of its area.
        assert_eq!(closest_grid(3000, 1500, 36, 448), (8, 4));
        assert_eq!(closest_grid(200, 100, 36, 448), (2, 1));
    }

    #[test]
    fn extreme_aspect_is_an_error_naming_the_image() {
        let e = plan_crops(40000, 10, &settings(), "strip.png").unwrap_err();
        assert!(matches!(e, VisionError::ExtremeAspect { .. }), "{e}");
        assert!(e.to_string().contains("strip.png"), "{e}");
    }

    #[test]
    fn token_count_and_mask_follow_padding() {
        // 500x300 → 2x1 grid, 150 px padding on the right → 10 masked columns of 64.
        let rgb = vec![128u8; 500 * 300 * 3];
        let img = preprocess_rgb(&settings(), 500, 300, &rgb, "t").unwrap();
        assert_eq!(img.crops, 2);
        assert_eq!(img.image_size, [448, 896]);
        // Even rows (16) × even unmasked columns (0..54 step 2 → 27) + first column (16).
        assert_eq!(img.num_img_tokens, 256 + 1 + 16 * 27 + 16 + 16);
        let m = 32 * 32;
        assert!(
            img.attention_mask[..m].iter().all(|&v| v == 1.0),
            "global view is unmasked"
        );
        let crop2 = &img.attention_mask[2 * m..3 * m];
        assert_eq!(crop2[21], 1.0);
        assert_eq!(crop2[22], 0.0);
        assert_eq!(img.pixel_values.len(), 3 * 3 * 448 * 448);
        // Mid-grey 128 → (128/255 - .5)/.5; the right crop's padding is white → 1.0.
        let grey = (128.0f32 * (1.0 / 255.0) - 0.5) / 0.5;
        assert_eq!(img.pixel_values[3 * 448 * 448], grey);
        let last = img.pixel_values[3 * 3 * 448 * 448 - 1];
        assert_eq!(last, 1.0);
    }

    #[test]
    fn stacking_pads_with_zero_pixels_and_ones_masks() {
        let s = settings();
        let small = preprocess_rgb(&s, 10, 10, &[0u8; 300], "a").unwrap();
        let wide = preprocess_rgb(&s, 900, 400, &vec![9u8; 900 * 400 * 3], "b").unwrap();
        let batch = ImageBatch::stack(&[small.clone(), wide.clone()], &s);
        assert_eq!((batch.images, batch.views), (2, 4));
        let view_px = 3 * 448 * 448;
        assert!(batch.pixel_values[2 * view_px..4 * view_px]
            .iter()
            .all(|&v| v == 0.0));
        let m = 32 * 32;
        assert!(batch.attention_mask[2 * m..4 * m].iter().all(|&v| v == 1.0));
        assert_eq!(
            batch.num_img_tokens,
            vec![small.num_img_tokens, wide.num_img_tokens]
        );
        assert_eq!(batch.image_sizes, vec![448, 448, 448, 1344]);
    }

    #[test]
    fn bad_frames_are_errors() {
        let s = settings();
        assert!(matches!(
            preprocess_rgb(&s, 0, 0, &[], "f"),
            Err(VisionError::Empty { .. })
        ));
        assert!(matches!(
            preprocess_rgb(&s, 4, 4, &[0; 10], "f"),
            Err(VisionError::BufferSize { .. })
        ));
        assert!(matches!(
            preprocess_rgb(&s, 20_000, 20_000, &[], "f"),
            Err(VisionError::TooLarge { .. })
        ));
    }

    fn png_bytes(width: u32, height: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(data).unwrap();
        out
    }

    #[test]
    fn png_round_trips_and_bad_files_are_named_errors() {
        let data: Vec<u8> = (0..5 * 3 * 3).map(|i| i as u8).collect();
        let bytes = png_bytes(5, 3, &data);
        let img = decode_image(&bytes, "ok.png").unwrap();
        assert_eq!((img.width, img.height), (5, 3));
        assert_eq!(img.rgb, data);

        let e = decode_image(&bytes[..bytes.len() - 20], "cut.png").unwrap_err();
        assert!(
            matches!(e, VisionError::Decode { format: "PNG", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("cut.png"));

        let e = decode_image(b"GIF89a...", "x.gif").unwrap_err();
        assert!(matches!(e, VisionError::UnknownFormat { .. }), "{e}");
        let e = decode_image(b"", "empty.jpg").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
    }

    /// A PNG signature and IHDR chunk only: no pixel data at all.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        bytes.extend_from_slice(&13u32.to_be_bytes());
        bytes.extend_from_slice(&ihdr);
        bytes.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        bytes
    }

    #[test]
    fn oversized_and_empty_pngs_are_refused_from_the_header() {
        // 20000x20000 would need 1.2 GB decoded: refused before any allocation.
        let e = decode_image(&png_header(20000, 20000), "huge.png").unwrap_err();
        let too_large = matches!(
            e,
            VisionError::TooLarge {
                width: 20000,
                height: 20000,
                ..
            }
        );
        assert!(too_large && e.to_string().contains("huge.png"), "{e}");
        let e = decode_image(&png_header(0, 0), "empty.png").unwrap_err();
        assert!(matches!(e, VisionError::Empty { .. }), "{e}");
        let e = decode_image(&png_header(16384, 16384), "many.png").unwrap_err();
        assert!(
            matches!(e, VisionError::TooLarge { .. }),
            "over 100 MP: {e}"
        );
    }

    const TINY_JPEG: &[u8] = include_bytes!("../../tests/fixtures/tiny.jpg");

    #[test]
    fn jpeg_decodes_and_bad_jpegs_are_refused() {
        let img = decode_image(TINY_JPEG, "tiny.jpg").unwrap();
        assert_eq!(
            (img.width, img.height, img.rgb.len()),
            (16, 16, 16 * 16 * 3)
        );

        // The same file with its frame header claiming 20000x20000: refused from the header.
        let mut huge = TINY_JPEG.to_vec();
        let sof = huge.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        huge[sof + 5..sof + 7].copy_from_slice(&20000u16.to_be_bytes());
        huge[sof + 7..sof + 9].copy_from_slice(&20000u16.to_be_bytes());
        let e = decode_image(&huge, "huge.jpg").unwrap_err();
        assert!(
            matches!(
                e,
                VisionError::TooLarge {
                    width: 20000,
                    height: 20000,
                    ..
                }
            ),
            "{e}"
        );
        let mut empty = TINY_JPEG.to_vec();
        empty[sof + 5..sof + 9].fill(0);
        let e = decode_image(&empty, "empty.jpg").unwrap_err();
        assert!(matches!(e, VisionError::Empty { .. }), "{e}");

        for cut in [TINY_JPEG.len() / 2, TINY_JPEG.len() - 10, 7] {
            let e = decode_image(&TINY_JPEG[..cut], "cut.jpg").unwrap_err();
            assert!(
                matches!(e, VisionError::Decode { format: "JPEG", .. }),
                "cut at {cut}: {e}"
            );
            assert!(e.to_string().contains("cut.jpg"));
        }
        // Corrupt headers: the Huffman table segment overwritten with garbage.
        let mut garbled = TINY_JPEG.to_vec();
        let dht = garbled.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
        garbled[dht + 4..dht + 40].fill(0xEE);
        let e = decode_image(&garbled, "garbled.jpg").unwrap_err();
        assert!(
            matches!(e, VisionError::Decode { format: "JPEG", .. }),
            "{e}"
        );
    }

    /// CRC-32 (IEEE) for hand-made PNG chunks.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
