//! Streaming sample-rate conversion for the voice path: microphone rate → 16 kHz for the VAD,
//! synthesizer rate (espeak-ng 22.05 kHz, Piper 16/22.05 kHz) → the output device's rate.
//!
//! A polyphase windowed-sinc filter (Blackman window, 16 zero crossings each side, cutoff at 95 %
//! of the lower Nyquist frequency). The rates are fixed per stream and are whole numbers of Hz,
//! so the conversion ratio is an exact fraction `up / down` and every output sample falls on one
//! of `up` phases whose taps are computed once. In: any number of samples per call; out: the
//! samples that are complete so far (the filter's look-ahead is held back until `flush`).
//!
//! Why not a crate: the audio resampling crates either pull FFT stacks or change their API every
//! major release; this is ~100 lines with exact, table-tested behaviour and no allocation per
//! call beyond the output.

/// Zero crossings of the sinc kept on each side of the centre tap.
const HALF_TAPS: usize = 16;

#[derive(Debug, Clone)]
pub struct Resampler {
    from: u32,
    to: u32,
    up: usize,
    down: usize,
    /// `up` phases × `2 * HALF_TAPS` taps, in input-sample units at the input rate.
    taps: Vec<f32>,
    width: usize,
    /// Input not yet fully consumed, preceded by `width/2` samples of history.
    buf: Vec<f32>,
    /// Position of the next output sample, in units of 1/up input samples, relative to buf[0].
    pos: usize,
    /// Real input samples taken and output samples given since the start (for `flush`).
    fed: u64,
    produced: u64,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Resampler {
    /// A converter from `from` Hz to `to` Hz (both > 0).
    pub fn new(from: u32, to: u32) -> Resampler {
        let (from, to) = (from.max(1), to.max(1));
        let g = gcd(from as usize, to as usize);
        let (up, down) = (to as usize / g, from as usize / g);
        // Cutoff relative to the input Nyquist: lower it when decimating.
        let cutoff = 0.95 * (to as f64 / from as f64).min(1.0);
        let half = (HALF_TAPS as f64 / cutoff).ceil() as usize;
        let width = 2 * half;
        let mut taps = vec![0f32; up * width];
        for p in 0..up {
            let frac = p as f64 / up as f64;
            let mut sum = 0.0;
            for k in 0..width {
                // Distance (input samples) from this tap to the output instant.
                let x = k as f64 - (half as f64 - 1.0) - frac;
                let s = if x.abs() < 1e-12 {
                    cutoff
                } else {
                    (std::f64::consts::PI * cutoff * x).sin() / (std::f64::consts::PI * x)
                };
                let n = (x + half as f64) / (2.0 * half as f64); // 0..1 across the window
                let w = 0.42 - 0.5 * (std::f64::consts::TAU * n).cos()
                    + 0.08 * (2.0 * std::f64::consts::TAU * n).cos();
                let v = s * w;
                taps[p * width + k] = v as f32;
                sum += v;
            }
            // Unity gain at DC for every phase.
            for k in 0..width {
                taps[p * width + k] /= sum as f32;
            }
        }
        Resampler {
            from,
            to,
            up,
            down,
            taps,
            width,
            buf: vec![0.0; half - 1],
            pos: 0,
            fed: 0,
            produced: 0,
        }
    }

    pub fn rates(&self) -> (u32, u32) {
        (self.from, self.to)
    }

    /// Whether this converter changes anything.
    pub fn is_identity(&self) -> bool {
        self.from == self.to
    }

    /// Converts `input`, appending the output samples that are complete to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.is_identity() {
            out.extend_from_slice(input);
            return;
        }
        self.buf.extend_from_slice(input);
        self.fed += input.len() as u64;
        self.produced += self.drain(out) as u64;
    }

    fn drain(&mut self, out: &mut Vec<f32>) -> usize {
        let (up, down, width) = (self.up, self.down, self.width);
        let before = out.len();
        loop {
            let base = self.pos / up;
            if base + width > self.buf.len() {
                break;
            }
            let phase = self.pos % up;
            let taps = &self.taps[phase * width..(phase + 1) * width];
            let acc: f32 = self.buf[base..base + width]
                .iter()
                .zip(taps)
                .map(|(a, b)| a * b)
                .sum();
            out.push(acc);
            self.pos += down;
        }
        // Drop what no future output needs.
        let consumed = self.pos / up;
        if consumed > 0 {
            self.buf.drain(..consumed);
            self.pos -= consumed * up;
        }
        out.len() - before
    }

    /// Emits the samples held back for look-ahead (as if silence followed) and resets.
    pub fn flush(&mut self, out: &mut Vec<f32>) {
        if self.is_identity() {
            return;
        }
        // Output instants n * down / up that fall before the end of the real input.
        let owed = (self.fed * self.up as u64).div_ceil(self.down as u64) - self.produced;
        self.buf.extend(std::iter::repeat_n(0.0, self.width));
        let mut tmp = Vec::new();
        self.drain(&mut tmp);
        out.extend_from_slice(&tmp[..(owed as usize).min(tmp.len())]);
        *self = Resampler::new(self.from, self.to);
    }

    /// Converts a whole clip at once.
    pub fn convert(from: u32, to: u32, input: &[f32]) -> Vec<f32> {
        let mut r = Resampler::new(from, to);
        let mut out = Vec::with_capacity(input.len() * to as usize / from.max(1) as usize + 8);
        r.process(input, &mut out);
        r.flush(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, secs: f32, amp: f32) -> Vec<f32> {
        (0..(rate as f32 * secs) as usize)
            .map(|i| amp * (i as f32 * hz * std::f32::consts::TAU / rate as f32).sin())
            .collect()
    }

    /// Amplitude of `hz` in `x` (correlation with a sine and cosine), skipping the edges.
    fn tone_level(x: &[f32], rate: u32, hz: f32) -> f32 {
        let skip = x.len() / 10;
        let x = &x[skip..x.len() - skip];
        let (mut s, mut c) = (0.0f64, 0.0f64);
        for (i, v) in x.iter().enumerate() {
            let ph = i as f64 * hz as f64 * std::f64::consts::TAU / rate as f64;
            s += *v as f64 * ph.sin();
            c += *v as f64 * ph.cos();
        }
        (2.0 * (s * s + c * c).sqrt() / x.len() as f64) as f32
    }

    #[test]
    fn lengths_follow_the_ratio() {
        for (from, to) in [
            (48_000, 16_000),
            (22_050, 16_000),
            (16_000, 48_000),
            (22_050, 48_000),
            (44_100, 16_000),
        ] {
            let x = sine(from, 440.0, 1.0, 0.5);
            let y = Resampler::convert(from, to, &x);
            let want = to as i64;
            assert!(
                (y.len() as i64 - want).abs() <= 2,
                "{from}->{to}: {} samples, want ~{want}",
                y.len()
            );
        }
    }

    #[test]
    fn passband_tones_keep_their_level_and_stopband_tones_vanish() {
        for (from, to) in [
            (48_000, 16_000),
            (22_050, 16_000),
            (16_000, 22_050),
            (22_050, 48_000),
        ] {
            let x = sine(from, 1000.0, 1.0, 0.5);
            let y = Resampler::convert(from, to, &x);
            let level = tone_level(&y, to, 1000.0);
            assert!(
                (level - 0.5).abs() < 0.01,
                "{from}->{to}: 1 kHz level {level}"
            );
        }
        // 12 kHz at 48 kHz is above 16 kHz's Nyquist: it must not fold back to 4 kHz.
        let x = sine(48_000, 12_000.0, 1.0, 0.5);
        let y = Resampler::convert(48_000, 16_000, &x);
        let alias = tone_level(&y, 16_000, 4000.0);
        assert!(alias < 0.005, "alias level {alias}");
    }

    #[test]
    fn streaming_in_pieces_equals_one_call() {
        let x = sine(22_050, 300.0, 0.5, 0.7);
        let whole = Resampler::convert(22_050, 16_000, &x);
        let mut r = Resampler::new(22_050, 16_000);
        let mut pieces = Vec::new();
        for chunk in x.chunks(137) {
            r.process(chunk, &mut pieces);
        }
        r.flush(&mut pieces);
        assert_eq!(whole.len(), pieces.len());
        for (a, b) in whole.iter().zip(&pieces) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn identity_is_a_copy() {
        let x = sine(16_000, 440.0, 0.1, 0.5);
        assert_eq!(Resampler::convert(16_000, 16_000, &x), x);
    }
}
