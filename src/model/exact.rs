//! Which decode speed-ups keep greedy output exact on this bundle, on this ONNX Runtime.
//!
//! Speculative decoding verifies k drafted tokens in one k-row decoder run and compares each row
//! with the one-row run it replaces; KV prefix reuse prefills a prompt in two chunks instead of
//! one. Both are exact only if ONNX Runtime computes a row the same way whatever the number of
//! rows in the run. On ONNX Runtime 1.31 CPU it does not for one-row runs: GroupQueryAttention's
//! one-row path and MatMulNBits 4-bit (accuracy level 4) use other kernels than multi-row runs,
//! so the logits differ in the last bits on fp32 models (1e-6..1e-5) and by up to a whole logit
//! on SmolLM2 int8 (its activations are quantized to int8 inside MatMulNBits, so a last-bit
//! change moves a rounding step), which flips near-ties. Runs of two rows or more agree row for
//! row with each other, so a chunked prefill equals a whole one as long as every chunk has two
//! rows or more.
//!
//! In: a loaded decoder (and the embedding session for decoders that take embeddings). Out:
//! [`Exactness`], measured once per engine by [`probe`] (a few decoder runs on fixed token ids,
//! compared bit for bit), which [`Switch::Auto`] follows: on where exact, off with the reason
//! (logged, shown by `gemba doctor`). The probe is measured rather than inferred from the graph's
//! node types because the kernels ONNX Runtime picks change with its version, the provider and
//! the CPU.
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

/// What the probe found; `Err` carries the reason (for the log and `gemba doctor`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exactness {
    /// A k-row verify run gives the one-row runs' logits bit for bit.
    pub speculation: Result<(), String>,
    /// A prefill in chunks of two rows or more gives a whole prefill's logits bit for bit.
    pub prefix_reuse: Result<(), String>,
}

impl Exactness {
    /// One line per speed-up, for `gemba doctor` and the log.
    pub fn lines(&self) -> Vec<String> {
        let line = |what: &str, r: &Result<(), String>| match r {
            Ok(()) => format!("{what}: exact on this bundle (on by default)"),
            Err(why) => format!("{what}: off by default: {why}"),
        };
        vec![
            line("speculative decoding", &self.speculation),
            line("prefix reuse", &self.prefix_reuse),
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
    let speculation = if one_rows == *verify_rows {
        Ok(())
    } else {
        Err(format!(
            "a {PROBE_ROWS}-token verify run's logits differ from one-token runs' by up to {:.2e} \
             (ONNX Runtime computes one-row runs with other kernels), so drafts could flip a \
             near-tie of the greedy output; --speculate turns it on anyway",
            max_diff(&one_rows, verify_rows)
        ))
    };
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
            speculation: Ok(()),
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
    }
}
