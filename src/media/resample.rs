//! Separable image resampling with Pillow's arithmetic, so resized pixels match
//! onnxruntime-extensions bit for bit.
//!
//! onnxruntime-extensions resizes phi4mm images with a C port of Pillow's `Resample.c`
//! (`ImagingResample`): an antialiasing convolution whose kernel widens by the downscale factor,
//! weights computed in `f64` and normalised to sum 1, a horizontal pass then a vertical pass. For
//! 8-bit images the weights become 22-bit fixed point with round-half-away rounding and a
//! `+ 2^21` bias before the shift; for 32-bit float images the sums stay in `f64` and each pass
//! stores `f32`. Reproducing those rules (not merely "a bicubic") is what keeps the normalised
//! pixels within 1e-3 of the reference — a different rounding moves a uint8 by one step, and one
//! step is 0.0078 after normalisation.
//!
//! In: interleaved `u8` or `f32` pixels with a channel count. Out: the resized buffer, same
//! layout. Pure functions, no allocation beyond the output and one intermediate.

/// Resampling kernel, as Pillow defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Triangle kernel, support 1 (Pillow `BILINEAR`).
    Bilinear,
    /// Keys cubic convolution with a = -0.5, support 2 (Pillow `BICUBIC`).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Normalised weights of one axis: for each output position, the first input index, how many
/// inputs it reads, and `ksize` weights (unused tail zero).
#[derive(Debug, Clone)]
pub(crate) struct Coefficients {
    pub(crate) ksize: usize,
    /// `(first input index, number of inputs)` per output position.
    pub(crate) bounds: Vec<(usize, usize)>,
    /// `out_size * ksize` weights.
    pub(crate) weights: Vec<f64>,
}

impl Coefficients {
    /// Weights mapping `in_size` samples onto `out_size`, over the whole input (Pillow's box
    /// `[0, in_size)`).
    pub(crate) fn new(in_size: usize, out_size: usize, filter: Filter) -> Self {
        assert!(
            in_size > 0 && out_size > 0,
            "resample sizes must be positive"
        );
        // Pillow computes the box width in f32 (`in1 - in0`) before widening to f64.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0.0f64; out_size * ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's `(int)` truncates toward zero; negative starts clamp to 0 either way.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let count = xmax.saturating_sub(xmin);
            let k = &mut weights[xx * ksize..xx * ksize + ksize];
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(count) {
                let w = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            if ww != 0.0 {
                for kx in k.iter_mut().take(count) {
                    *kx /= ww;
                }
            }
            bounds.push((xmin, count));
        }
        Coefficients {
            ksize,
            bounds,
            weights,
        }
    }

    fn taps(&self, out: usize) -> (usize, &[f64]) {
        let (start, count) = self.bounds[out];
        (
            start,
            &self.weights[out * self.ksize..out * self.ksize + count],
        )
    }

    /// The 8-bit path's fixed-point weights: `round_half_away(w * 2^22)`.
    fn fixed_point(&self) -> Vec<i32> {
        self.weights
            .iter()
            .map(|&w| {
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            })
            .collect()
    }

    /// Input rows `[first, last)` that the output rows read.
    fn span(&self) -> (usize, usize) {
        let first = self.bounds.first().map_or(0, |b| b.0);
        let last = self.bounds.last().map_or(0, |b| b.0 + b.1);
        (first, last)
    }
}

/// Fixed-point precision of the 8-bit path: 32 bits less 8 for the result and 2 for overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One row of the 8-bit horizontal pass for `C` channels: the taps of an output pixel are read as
/// one slice (no per-sample bounds checks) and all channels accumulate together. Integer sums,
/// so the result is the generic loop's exactly.
fn horizontal_u8<const C: usize>(
    in_row: &[u8],
    out_row: &mut [u8],
    horiz: &Coefficients,
    k: &[i32],
) {
    for (xx, out_px) in out_row.chunks_exact_mut(C).enumerate() {
        let (start, count) = horiz.bounds[xx];
        let kk = &k[xx * horiz.ksize..xx * horiz.ksize + count];
        let px = &in_row[start * C..(start + count) * C];
        let mut acc = [1i32 << (PRECISION_BITS - 1); C];
        for (p, &kx) in px.chunks_exact(C).zip(kk) {
            for c in 0..C {
                acc[c] = acc[c].wrapping_add(i32::from(p[c]) * kx);
            }
        }
        for c in 0..C {
            out_px[c] = clip8(acc[c]);
        }
    }
}

/// One row of the float horizontal pass for `C` channels. Each channel still sums its taps in
/// order, in f64, so the result is bit-identical to the generic loop (and to the reference).
fn horizontal_f32<const C: usize>(in_row: &[f32], out_row: &mut [f32], horiz: &Coefficients) {
    for (xx, out_px) in out_row.chunks_exact_mut(C).enumerate() {
        let (start, kk) = horiz.taps(xx);
        let px = &in_row[start * C..(start + kk.len()) * C];
        let mut acc = [0.0f64; C];
        for (p, &kx) in px.chunks_exact(C).zip(kk) {
            for c in 0..C {
                acc[c] += f64::from(p[c]) * kx;
            }
        }
        for c in 0..C {
            out_px[c] = acc[c] as f32;
        }
    }
}

/// Resize interleaved 8-bit pixels (`channels` per pixel, 1 to 4, row-major) from `w × h` to
/// `out_w × out_h`, as Pillow's `ImagingResample` does for an 8-bit image.
pub fn resize_u8(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        w * h * channels,
        "resize_u8: buffer does not match its size"
    );
    assert!(
        (1..=4).contains(&channels),
        "resize_u8: 1 to 4 channels, not {channels}"
    );
    let horiz = Coefficients::new(w, out_w, filter);
    let vert = Coefficients::new(h, out_h, filter);
    let need_h = out_w != w;
    let need_v = out_h != h;
    if !need_h && !need_v {
        return src.to_vec();
    }
    // Horizontal pass over only the rows the vertical pass will read.
    let (row0, row1) = if need_h && need_v {
        vert.span()
    } else {
        (0, h)
    };
    let tmp_owned;
    let (tmp, tmp_w, tmp_row0): (&[u8], usize, usize) = if need_h {
        let k = horiz.fixed_point();
        let mut out = vec![0u8; (row1 - row0) * out_w * channels];
        let rows = src[row0 * w * channels..row1 * w * channels].chunks_exact(w * channels);
        for (in_row, out_row) in rows.zip(out.chunks_exact_mut(out_w * channels)) {
            match channels {
                1 => horizontal_u8::<1>(in_row, out_row, &horiz, &k),
                2 => horizontal_u8::<2>(in_row, out_row, &horiz, &k),
                3 => horizontal_u8::<3>(in_row, out_row, &horiz, &k),
                4 => horizontal_u8::<4>(in_row, out_row, &horiz, &k),
                _ => unreachable!("channels checked above"),
            }
        }
        tmp_owned = out;
        (&tmp_owned, out_w, row0)
    } else {
        (src, w, 0)
    };
    if !need_v {
        return tmp.to_vec();
    }
    let k = vert.fixed_point();
    let stride = tmp_w * channels;
    let mut out = vec![0u8; out_h * stride];
    // Whole rows at a time (same per-sample summation order, but contiguous memory).
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (start, count) = vert.bounds[yy];
        let start = start - tmp_row0;
        let kk = &k[yy * vert.ksize..yy * vert.ksize + count];
        acc.fill(1 << (PRECISION_BITS - 1));
        for (y, &ky) in kk.iter().enumerate() {
            let row = &tmp[(start + y) * stride..(start + y + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add(i32::from(v) * ky);
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Resize interleaved `f32` pixels as Pillow does for a 32-bit float (`"F"`) image: `f64`
/// sums, `f32` stored after each pass. Channels (1 to 4) are independent, exactly as resizing
/// each plane on its own.
pub fn resize_f32(
    src: &[f32],
    w: usize,
    h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        w * h * channels,
        "resize_f32: buffer does not match its size"
    );
    assert!(
        (1..=4).contains(&channels),
        "resize_f32: 1 to 4 channels, not {channels}"
    );
    let horiz = Coefficients::new(w, out_w, filter);
    let vert = Coefficients::new(h, out_h, filter);
    let need_h = out_w != w;
    let need_v = out_h != h;
    if !need_h && !need_v {
        return src.to_vec();
    }
    let (row0, row1) = if need_h && need_v {
        vert.span()
    } else {
        (0, h)
    };
    let tmp_owned;
    let (tmp, tmp_w, tmp_row0): (&[f32], usize, usize) = if need_h {
        let mut out = vec![0f32; (row1 - row0) * out_w * channels];
        let rows = src[row0 * w * channels..row1 * w * channels].chunks_exact(w * channels);
        for (in_row, out_row) in rows.zip(out.chunks_exact_mut(out_w * channels)) {
            match channels {
                1 => horizontal_f32::<1>(in_row, out_row, &horiz),
                2 => horizontal_f32::<2>(in_row, out_row, &horiz),
                3 => horizontal_f32::<3>(in_row, out_row, &horiz),
                4 => horizontal_f32::<4>(in_row, out_row, &horiz),
                _ => unreachable!("channels checked above"),
            }
        }
        tmp_owned = out;
        (&tmp_owned, out_w, row0)
    } else {
        (src, w, 0)
    };
    if !need_v {
        return tmp.to_vec();
    }
    let stride = tmp_w * channels;
    let mut out = vec![0f32; out_h * stride];
    // Whole rows at a time (same per-sample summation order, but contiguous memory).
    let mut acc = vec![0f64; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (start, kk) = vert.taps(yy);
        let start = start - tmp_row0;
        acc.fill(0.0);
        for (y, &ky) in kk.iter().enumerate() {
            let row = &tmp[(start + y) * stride..(start + y + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += f64::from(v) * ky;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = a as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bicubic_halving_weights_match_hand_computed_kernel() {
        // 4 → 2: scale 2, support 4, first output centred at 1.0 reads inputs 0..4 at kernel
        // arguments (x + 0.5 - 1) / 2 = -0.25, 0.25, 0.75, 1.25.
        let c = Coefficients::new(4, 2, Filter::Bicubic);
        let raw = [0.8671875, 0.8671875, 0.2265625, -0.0703125];
        let sum: f64 = raw.iter().sum();
        let (start, taps) = c.taps(0);
        assert_eq!(start, 0);
        assert_eq!(taps.len(), 4);
        for (got, want) in taps.iter().zip(raw.iter().map(|r| r / sum)) {
            assert_eq!(*got, want);
        }
        // The second output mirrors the first.
        let (_, taps1) = c.taps(1);
        let mut rev = taps1.to_vec();
        rev.reverse();
        assert_eq!(rev, taps.to_vec());
    }

    #[test]
    fn bilinear_upscale_uses_unwidened_triangle() {
        // 2 → 4: scale 0.5, no widening; output 1 is centred at 0.75 → weights 0.75 / 0.25.
        let c = Coefficients::new(2, 4, Filter::Bilinear);
        let (start, taps) = c.taps(1);
        assert_eq!(start, 0);
        assert_eq!(taps, &[0.75, 0.25]);
        // Edge outputs are clamped to the first pixel alone.
        let (start, taps) = c.taps(0);
        assert_eq!((start, taps), (0, &[1.0][..]));
    }

    #[test]
    fn fixed_point_rounds_half_away_from_zero() {
        let c = Coefficients {
            ksize: 3,
            bounds: vec![(0, 3)],
            weights: vec![
                0.5 / f64::from(1u32 << 22),
                -0.5 / f64::from(1u32 << 22),
                1.0,
            ],
        };
        assert_eq!(c.fixed_point(), vec![1, -1, 1 << 22]);
    }

    #[test]
    fn u8_constant_image_stays_constant_and_same_size_is_identity() {
        let src = vec![77u8; 13 * 9 * 3];
        for (ow, oh) in [(5, 4), (30, 20), (13, 20)] {
            let out = resize_u8(&src, 13, 9, 3, ow, oh, Filter::Bilinear);
            assert_eq!(out.len(), ow * oh * 3);
            assert!(out.iter().all(|&v| v == 77), "{ow}x{oh}");
        }
        let pattern: Vec<u8> = (0..13 * 9 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(
            resize_u8(&pattern, 13, 9, 3, 13, 9, Filter::Bilinear),
            pattern
        );
    }

    #[test]
    fn u8_bilinear_matches_hand_computed_pixels() {
        // One row 0, 100 → width 4: weights (1), (.75,.25), (.25,.75), (1).
        let src = [0u8, 100];
        let out = resize_u8(&src, 2, 1, 1, 4, 1, Filter::Bilinear);
        assert_eq!(out, vec![0, 25, 75, 100]);
        // Halving 0, 10, 20, 30 with bilinear (support widened to 2): output 0 is centred at 1.0
        // and reads inputs 0..3 at kernel arguments -.25, .25, .75 → weights .75 .75 .25 / 1.75
        // → (7.5 + 5) / 1.75 = 7.14 → 7.
        let out = resize_u8(&[0, 10, 20, 30], 4, 1, 1, 2, 1, Filter::Bilinear);
        assert_eq!(out[0], 7);
    }

    #[test]
    fn f32_bicubic_keeps_linear_ramp_in_the_interior() {
        // Cubic convolution reproduces linear functions where the kernel is not clipped.
        let w = 64;
        let src: Vec<f32> = (0..w).map(|x| x as f32 * 0.5).collect();
        let out = resize_f32(&src, w, 1, 1, 32, 1, Filter::Bicubic);
        for (xx, v) in out.iter().enumerate().skip(3).take(26) {
            let center = (xx as f64 + 0.5) * 2.0 - 0.5;
            assert!((f64::from(*v) - center * 0.5).abs() < 1e-5, "{xx}: {v}");
        }
    }
}
