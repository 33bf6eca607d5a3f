//! Which decode speed-ups keep greedy output exact on this bundle, on this ONNX Runtime.
//!
//! Speculative decoding verifies k drafted tokens in one k-row decoder run and compares each row
//! with the one-row run it replaces; KV prefix reuse prefills a prompt in two chunks instead of
//! one. Both are exact only if ONNX Runtime computes a row the same way whatever the number of
//! rows in the run. On ONNX Runtime 1.31 CPU it does not for one-row runs: GroupQueryAttention's
//! one-row path and MatMulNBits use other kernels than multi-row runs. On float models the
//! logits then differ in the last bits (the demo and tiny-qwen2: 2e-6..7e-6, a few units in the
//! last place of logits near 10): float rounding, which changes a greedy token only where two
//! tokens tie to that precision. On SmolLM2 int8 / int4 they differ by up to half a logit (its
//! activations are quantized to int8 inside MatMulNBits, so a last-bit change moves a rounding
//! step), which flips near-ties of real text. Runs of two rows or more agree row for row with
//! each other, so a chunked prefill equals a whole one as long as every chunk has two rows or
//! more.
//!
//! In: a loaded decoder (and the embedding session for decoders that take embeddings). Out:
//! [`Exactness`], measured once per engine by [`probe`] (a few decoder runs on fixed token ids),
//! which [`Switch::Auto`] follows: speculation on where a verify run's rows equal one-row runs'
//! bit for bit or differ by float rounding only ([`ROUNDING`]), prefix reuse on where chunked
//! prefills are bit-exact; what is off is logged with the reason and shown by `gemba doctor`.
//! The probe is measured rather than inferred from the graph's node types because the kernels
//! ONNX Runtime picks change with its version, the provider and the CPU.
//!
//! Why speculation cannot be made exact where the rows differ by more (measured on SmolLM2 with
//! ONNX Runtime in Python, 10 prompts): accepting a drafted token only where its logit leads the
//! next by more than the kernels' difference does not help, because the accepted tokens' keys
//! and values come from the multi-row run too; four such positions alone moved the logits of
//! the one-row steps after them by 0.19 (median) to 0.98, and flipped 8 of 288 greedy tokens.
//! A one-row run's cache can only come from one-row runs, which is decoding without drafts.
//!
//! [`keep_prefix`] stores what the prefix cache keeps after a generation so that reuse stays
//! exact: the prompt's positions (prefilled in multi-row runs) and the answer's positions run
//! again as one multi-row run (the one-row decode steps computed them another way than a cold
//! prefill of the follow-up question would).

use serde::{Deserialize, Serialize};

use super::generate::{Decoder, Embedder, GenerateError, Kv, StepTokens};
use super::prefix::PrefixLimits;
use super::speculate::Speculation;

/// `auto` (the default: on where the probe finds it exact), `true` or `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Switch {
    #[default]
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(Switch::On),
            Raw::B(false) => Ok(Switch::Off),
            Raw::S(s) if s == "auto" => Ok(Switch::Auto),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "expected \"auto\", true or false, got \"{s}\""
            ))),
        }
    }
}

impl Serialize for Switch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Switch::Auto => s.serialize_str("auto"),
            Switch::On => s.serialize_bool(true),
            Switch::Off => s.serialize_bool(false),
        }
    }
}

/// How a verify run's rows compare with one-row runs where speculation is on by default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Agreement {
    /// Bit for bit.
    Exact,
    /// Apart by float rounding only: at most [`ROUNDING`] of the largest logit.
    Rounding {
        /// The largest difference of a logit.
        max_diff: f32,
        /// The largest logit's magnitude.
        largest: f32,
    },
}

/// The differences, relative to the largest logit, that count as float rounding: about 84 units
/// in the last place of an f32. The float bundles here stay 15× below it (7e-6 against logits
/// near 11: 8 units in the last place), SmolLM2 1,800× above it (0.5 against 28).
pub const ROUNDING: f32 = 1e-5;

/// What the probe found; `Err` carries the reason (for the log and `gemba doctor`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exactness {
    /// A k-row verify run gives the one-row runs' logits, bit for bit or to float rounding.
    pub speculation: Result<Agreement, String>,
    /// A prefill in chunks of two rows or more gives a whole prefill's logits bit for bit.
    pub prefix_reuse: Result<(), String>,
}

impl Exactness {
    /// One line per speed-up, for `gemba doctor` and the log.
    pub fn lines(&self) -> Vec<String> {
        let exact = |what: &str| format!("{what}: exact on this bundle (on by default)");
        let off = |what: &str, why: &str| format!("{what}: off by default: {why}");
        let spec = "speculative decoding";
        vec![
            match &self.speculation {
                Ok(Agreement::Exact) => exact(spec),
                Ok(Agreement::Rounding { max_diff, largest }) => format!(
                    "{spec}: on by default: a {PROBE_ROWS}-token verify run's logits differ from \
                     one-token runs' by up to {max_diff:.2e}, float rounding (at most \
                     {ROUNDING:.0e} of the largest logit, {largest:.1}), which changes a greedy \
                     token only where two tie that closely; --no-speculate turns it off"
                ),
                Err(why) => off(spec, why),
            },
            match &self.prefix_reuse {
                Ok(()) => exact("prefix reuse"),
                Err(why) => off("prefix reuse", why),
            },
        ]
    }
}

/// Prompt positions before the probe's runs compared.
const PROBE_PREFIX: usize = 12;
/// Rows of the verify run compared with one-row runs.
const PROBE_ROWS: usize = 4;

/// Runs `ids` from an empty cache in consecutive runs of `sizes` tokens; every row's logits of
/// each run.
fn runs(
    decoder: &mut Decoder,
    embedder: &mut Option<&mut dyn Embedder>,
    ids: &[u32],
    sizes: &[usize],
) -> Result<Vec<Vec<f32>>, GenerateError> {
    let mut kv = decoder.reset(ids.len())?;
    let mut out = Vec::with_capacity(sizes.len());
    let mut past = 0;
    for &n in sizes {
        let t = &ids[past..past + n];
        let r = match embedder {
            Some(e) => e.embed(t).and_then(|v| {
                decoder
                    .step(&mut kv, StepTokens::Embeds(&v), past, 0, true)
                    .map(|l| l.to_vec())
            }),
            None => decoder
                .step(&mut kv, StepTokens::Ids(t), past, 0, true)
                .map(|l| l.to_vec()),
        };
        match r {
            Ok(l) => out.push(l),
            Err(e) => {
                decoder.keep(kv);
                return Err(e);
            }
        }
        past += n;
    }
    decoder.keep(kv);
    Ok(out)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Measures whether speculation and prefix reuse are exact: a few decoder runs over fixed ids
/// (below `vocab`), compared bit for bit.
pub fn probe(
    decoder: &mut Decoder,
    mut embedder: Option<&mut dyn Embedder>,
    vocab: usize,
) -> Result<Exactness, GenerateError> {
    let n = PROBE_PREFIX + PROBE_ROWS;
    // Ordinary ids spread over the vocabulary (past the first few, often special).
    let span = vocab.saturating_sub(8).max(1) as u64;
    let ids: Vec<u32> = (0..n as u64)
        .map(|i| (8 + (i * 7919 + 104_729) % span) as u32)
        .collect();
    let mut one_sizes = vec![PROBE_PREFIX];
    one_sizes.extend(std::iter::repeat_n(1, PROBE_ROWS));
    let one = runs(decoder, &mut embedder, &ids, &one_sizes)?;
    let verify = runs(decoder, &mut embedder, &ids, &[PROBE_PREFIX, PROBE_ROWS])?;
    let whole = runs(decoder, &mut embedder, &ids, &[n])?;
    let chunk2 = runs(decoder, &mut embedder, &ids, &[n - 2, 2])?;
    let one_rows: Vec<f32> = one[1..].concat();
    let verify_rows = &verify[1];
    let vocab_rows = verify_rows.len() / PROBE_ROWS;
    let last = |v: &[f32]| v[v.len() - vocab_rows..].to_vec();
    let speculation = agreement(&one_rows, verify_rows);
    let whole_last = last(&whole[0]);
    let (a, b) = (last(verify_rows), last(&chunk2[1]));
    let prefix_reuse = if whole_last == a && whole_last == b {
        Ok(())
    } else {
        Err(format!(
            "a prefill in two chunks differs from a whole one by up to {:.2e}; \
             [model] prefix_cache = \"64MiB\" turns it on anyway",
            max_diff(&whole_last, &a).max(max_diff(&whole_last, &b))
        ))
    };
    Ok(Exactness {
        speculation,
        prefix_reuse,
    })
}

/// How a verify run's `verify` rows compare with the one-row runs' `one` (same layout).
fn agreement(one: &[f32], verify: &[f32]) -> Result<Agreement, String> {
    if one == verify {
        return Ok(Agreement::Exact);
    }
    // A NaN or infinity on either side is never rounding (f32::max would skip a NaN).
    let finite = one.iter().chain(verify).all(|x| x.is_finite());
    let max_diff = max_diff(one, verify);
    let largest = one.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if finite && max_diff <= ROUNDING * largest {
        return Ok(Agreement::Rounding { max_diff, largest });
    }
    Err(format!(
        "a {PROBE_ROWS}-token verify run's logits differ from one-token runs' by up to \
         {max_diff:.2e}, more than float rounding ({ROUNDING:.0e} of the largest logit, \
         {largest:.1}: ONNX Runtime computes one-row runs with other kernels), so drafts would \
         flip near-ties of the greedy output; --speculate turns it on anyway"
    ))
}

/// The default prefix cache size where reuse is exact.
pub const DEFAULT_PREFIX_BYTES: usize = 64 << 20;

/// The drafts a switch asks for, given what the probe found.
pub fn speculation(switch: Switch, exact: &Exactness) -> Speculation {
    match switch {
        Switch::On => Speculation::default(),
        Switch::Off => Speculation::OFF,
        Switch::Auto if exact.speculation.is_ok() => Speculation::default(),
        Switch::Auto => Speculation::OFF,
    }
}

/// The prefix cache's limits: `bytes` as configured (`None`: auto — the default size where
/// reuse is exact, else off).
pub fn prefix_limits(
    bytes: Option<usize>,
    ttl: std::time::Duration,
    exact: &Exactness,
) -> PrefixLimits {
    let max_bytes = match bytes {
        Some(b) => b,
        None if exact.prefix_reuse.is_ok() => DEFAULT_PREFIX_BYTES,
        None => 0,
    };
    PrefixLimits {
        max_bytes,
        ttl,
        ..PrefixLimits::default()
    }
}

/// After a generation: keeps `ids` (the sequence whose KV the cache holds, the prompt's
/// `prompt_len` first) in the prefix cache, the answer's positions run again as one multi-row
/// run so that they are what a cold prefill of a follow-up question computes. An answer of one
/// token is left out (a one-row run is not exact).
pub(crate) fn keep_prefix(
    decoder: &mut Decoder,
    kv: &mut Kv,
    embedder: &mut Option<&mut dyn Embedder>,
    ids: &[u32],
    prompt_len: usize,
) -> Result<(), GenerateError> {
    if decoder.kv_on_device || !decoder.prefix.wants(ids, decoder.adapter_tag) {
        return Ok(());
    }
    let ids = if ids.len() >= prompt_len + 2 {
        let answer = &ids[prompt_len..];
        decoder.truncate(kv, prompt_len)?;
        match embedder {
            Some(e) => {
                let v = e.embed(answer)?;
                decoder.step(kv, StepTokens::Embeds(&v), prompt_len, 0, false)?;
            }
            None => {
                decoder.step(kv, StepTokens::Ids(answer), prompt_len, 0, false)?;
            }
        }
        ids
    } else {
        &ids[..ids.len().min(prompt_len)]
    };
    decoder.save_prefix(kv, ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_reads_auto_true_false_and_nothing_else() {
        #[derive(Deserialize)]
        struct T {
            s: Switch,
        }
        let read = |t: &str| toml::from_str::<T>(t).map(|t| t.s);
        assert_eq!(read("s = \"auto\"").unwrap(), Switch::Auto);
        assert_eq!(read("s = true").unwrap(), Switch::On);
        assert_eq!(read("s = false").unwrap(), Switch::Off);
        let e = read("s = \"yes\"").unwrap_err().to_string();
        assert!(e.contains("\"auto\", true or false"), "{e}");
    }

    #[test]
    fn auto_follows_the_probe_and_explicit_settings_win() {
        let exact = Exactness {
            speculation: Ok(Agreement::Exact),
            prefix_reuse: Ok(()),
        };
        let not = Exactness {
            speculation: Err("differs".into()),
            prefix_reuse: Err("differs".into()),
        };
        assert!(speculation(Switch::Auto, &exact).is_on());
        assert!(!speculation(Switch::Auto, &not).is_on());
        assert!(speculation(Switch::On, &not).is_on());
        assert!(!speculation(Switch::Off, &exact).is_on());
        let ttl = std::time::Duration::from_secs(60);
        assert_eq!(
            prefix_limits(None, ttl, &exact).max_bytes,
            DEFAULT_PREFIX_BYTES
        );
        assert_eq!(prefix_limits(None, ttl, &not).max_bytes, 0);
        assert_eq!(prefix_limits(Some(1 << 20), ttl, &not).max_bytes, 1 << 20);
        assert_eq!(prefix_limits(Some(0), ttl, &exact).max_bytes, 0);
        assert!(not.lines()[0].contains("off by default: differs"));
        let rounding = Exactness {
            speculation: Ok(Agreement::Rounding {
                max_diff: 7e-6,
                largest: 18.0,
            }),
            prefix_reuse: Ok(()),
        };
        assert!(speculation(Switch::Auto, &rounding).is_on());
        assert!(!speculation(Switch::Off, &rounding).is_on());
        assert!(rounding.lines()[0].contains("on by default"));
    }

    #[test]
    fn float_rounding_is_a_differences_share_of_the_largest_logit() {
        let one = [18.0, -3.0, 0.5, 2.0];
        assert_eq!(agreement(&one, &one), Ok(Agreement::Exact));
        // The demo's case (against logits near 11 there).
        let near = [18.0, -3.0 + 7e-6, 0.5, 2.0];
        match agreement(&one, &near) {
            Ok(Agreement::Rounding { max_diff, largest }) => {
                assert!((max_diff - 7e-6).abs() < 1e-6, "{max_diff}");
                assert_eq!(largest, 18.0);
            }
            other => panic!("{other:?}"),
        }
        // SmolLM2's case: half a logit against 29.
        let one = [29.0, 1.0, -2.0];
        let e = agreement(&one, &[29.0, 1.5, -2.0]).unwrap_err();
        assert!(
            e.contains("5.00e-1") && e.contains("more than float rounding"),
            "{e}"
        );
        // Just past the bound; a NaN is never rounding.
        assert!(agreement(&[10.0, 0.0], &[10.0, 2e-4]).is_err());
        assert!(agreement(&[10.0, 0.0], &[10.0, f32::NAN]).is_err());
    }
}
