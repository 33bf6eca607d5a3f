//! KV prefix reuse: the KV cache of token sequences already prefilled, kept for the next prompt
//! that starts the same way.
//!
//! What flows in: after a generation, the token ids whose KV the cache holds (prompt + answer so
//! far, cut before the first image/audio placeholder: there the KV depends on the media, not on
//! the id) and a host copy of their KV, `[kv_heads, len, head_size]` per layer, key and value.
//! What flows out: for a new prompt, the entry sharing the longest common prefix with it (any
//! prefix of a stored sequence is valid, the decoder being causal) — the system prompt, a
//! camera's fixed prompt text, the conversation so far for a follow-up question. `generate`
//! writes those positions into its KV cache and prefills only the rest.
//!
//! Bounded in bytes; the least recently used entry goes first; entries unused for longer than
//! the time to live are dropped. An entry whose ids are a prefix of a new one is replaced by it.
//! Entries are keyed by the LoRA adapter active when they were made too (an adapter changes the
//! KV). Host memory only: a cache on a GPU is not copied out (reuse is off there).

use std::time::{Duration, Instant};

use half::{bf16, f16};

/// One layer's key or value for `len` positions, `[kv_heads, len, head_size]`.
#[derive(Debug, Clone)]
pub enum HostKv {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl HostKv {
    fn bytes(&self) -> usize {
        match self {
            HostKv::F32(v) => v.len() * 4,
            HostKv::F16(v) => v.len() * 2,
            HostKv::Bf16(v) => v.len() * 2,
        }
    }
}

#[derive(Debug)]
pub struct Entry {
    pub ids: Vec<u32>,
    pub adapter: usize,
    /// Per layer: (key, value).
    pub layers: Vec<(HostKv, HostKv)>,
    bytes: usize,
    last_used: Instant,
}

/// How a prefix cache is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixLimits {
    /// 0 turns reuse off.
    pub max_bytes: usize,
    pub ttl: Duration,
    /// Matches shorter than this are not worth a copy.
    pub min_tokens: usize,
}

impl Default for PrefixLimits {
    /// 64 MiB, 10 minutes, at least 8 tokens.
    fn default() -> Self {
        PrefixLimits {
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(600),
            min_tokens: 8,
        }
    }
}

#[derive(Debug, Default)]
pub struct PrefixCache {
    pub limits: PrefixLimits,
    entries: Vec<Entry>,
    used: usize,
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(limits: PrefixLimits) -> PrefixCache {
        PrefixCache {
            limits,
            entries: Vec::new(),
            used: 0,
        }
    }

    pub fn is_on(&self) -> bool {
        self.limits.max_bytes > 0
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.used = 0;
    }

    /// New limits; what no longer fits is evicted now.
    pub fn set_limits(&mut self, limits: PrefixLimits) {
        self.limits = limits;
        self.evict(Instant::now(), 0);
    }

    /// The entry sharing the longest prefix with `ids` (at least `min_tokens`), and that length;
    /// marks it used.
    pub fn lookup(&mut self, ids: &[u32], adapter: usize) -> Option<(&Entry, usize)> {
        if !self.is_on() {
            return None;
        }
        let now = Instant::now();
        self.evict(now, 0);
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapter == adapter)
            .map(|(i, e)| (i, common_prefix(&e.ids, ids)))
            .max_by_key(|&(i, n)| (n, self.entries[i].last_used))?;
        if best.1 < self.limits.min_tokens.max(1) {
            return None;
        }
        let e = &mut self.entries[best.0];
        e.last_used = now;
        Some((&self.entries[best.0], best.1))
    }

    /// Whether storing `ids` would add anything (no entry already holds them as a prefix).
    pub fn wants(&self, ids: &[u32], adapter: usize) -> bool {
        self.is_on()
            && ids.len() >= self.limits.min_tokens.max(1)
            && !self.entries.iter().any(|e| {
                e.adapter == adapter && e.ids.len() >= ids.len() && e.ids[..ids.len()] == *ids
            })
    }

    /// Stores a sequence's KV; entries it extends are replaced, then the least recently used
    /// go until the cache fits. An entry larger than the whole budget is not stored.
    pub fn insert(&mut self, ids: Vec<u32>, adapter: usize, layers: Vec<(HostKv, HostKv)>) {
        let bytes: usize = layers
            .iter()
            .map(|(k, v)| k.bytes() + v.bytes())
            .sum::<usize>()
            + ids.len() * 4;
        if !self.is_on() || bytes > self.limits.max_bytes {
            return;
        }
        let mut i = 0;
        while i < self.entries.len() {
            let e = &self.entries[i];
            if e.adapter == adapter && e.ids.len() <= ids.len() && ids[..e.ids.len()] == e.ids[..] {
                self.used -= e.bytes;
                self.entries.swap_remove(i);
            } else {
                i += 1;
            }
        }
        let now = Instant::now();
        self.evict(now, bytes);
        self.used += bytes;
        self.entries.push(Entry {
            ids,
            adapter,
            layers,
            bytes,
            last_used: now,
        });
    }

    /// Drops expired entries, then the least recently used until `extra` more bytes fit.
    fn evict(&mut self, now: Instant, extra: usize) {
        let ttl = self.limits.ttl;
        let mut used = self.used;
        self.entries.retain(|e| {
            let keep = now.duration_since(e.last_used) <= ttl;
            if !keep {
                used -= e.bytes;
            }
            keep
        });
        self.used = used;
        while self.used + extra > self.limits.max_bytes && !self.entries.is_empty() {
            let (i, _) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .expect("not empty");
            self.used -= self.entries[i].bytes;
            self.entries.swap_remove(i);
        }
    }
}

/// The first `len` positions of a `[heads, cap, d]` buffer.
pub fn gather<T: Copy>(src: &[T], heads: usize, cap: usize, d: usize, len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(heads * len * d);
    for h in 0..heads {
        out.extend_from_slice(&src[h * cap * d..h * cap * d + len * d]);
    }
    out
}

/// Writes the first `len` positions of a `[heads, have, d]` entry into a `[heads, cap, d]`
/// buffer.
pub fn scatter<T: Copy>(
    dst: &mut [T],
    cap: usize,
    src: &[T],
    heads: usize,
    have: usize,
    d: usize,
    len: usize,
) {
    for h in 0..heads {
        dst[h * cap * d..h * cap * d + len * d]
            .copy_from_slice(&src[h * have * d..h * have * d + len * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(n: usize) -> Vec<(HostKv, HostKv)> {
        vec![(HostKv::F32(vec![0.0; n]), HostKv::F32(vec![0.0; n]))]
    }

    fn limits(max_bytes: usize) -> PrefixLimits {
        PrefixLimits {
            max_bytes,
            ttl: Duration::from_secs(60),
            min_tokens: 2,
        }
    }

    #[test]
    fn longest_common_prefix_wins_and_extensions_replace() {
        let mut c = PrefixCache::new(limits(1 << 20));
        c.insert(vec![1, 2, 3, 4], 0, kv(4));
        c.insert(vec![1, 2, 9], 0, kv(3));
        assert_eq!(
            c.lookup(&[1, 2, 3, 4, 5], 0)
                .map(|(e, n)| (e.ids.clone(), n)),
            Some((vec![1, 2, 3, 4], 4))
        );
        assert_eq!(c.lookup(&[1, 2, 9, 9], 0).map(|(_, n)| n), Some(3));
        // Below min_tokens, another adapter: no reuse.
        assert!(c.lookup(&[1, 7], 0).is_none());
        assert!(c.lookup(&[1, 2, 3], 5).is_none());
        // The conversation grows: its entry replaces the shorter one.
        assert!(!c.wants(&[1, 2, 3], 0));
        c.insert(vec![1, 2, 3, 4, 5, 6], 0, kv(6));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn bounded_in_bytes_least_recently_used_first() {
        // Each entry: 2 × 10 f32 + 3 ids = 92 bytes; room for two.
        let mut c = PrefixCache::new(limits(200));
        c.insert(vec![1, 1, 1], 0, kv(10));
        c.insert(vec![2, 2, 2], 0, kv(10));
        assert!(c.lookup(&[1, 1, 1], 0).is_some()); // 1 is now the most recent
        c.insert(vec![3, 3, 3], 0, kv(10));
        assert!(c.used_bytes() <= 200);
        assert!(
            c.lookup(&[2, 2, 2], 0).is_none(),
            "the least recently used went"
        );
        assert!(c.lookup(&[1, 1, 1], 0).is_some());
        // Larger than the budget: not stored, nothing evicted.
        c.insert(vec![4, 4, 4], 0, kv(100));
        assert_eq!(c.len(), 2);
        // Off.
        c.set_limits(limits(0));
        assert!(c.is_empty() && c.lookup(&[1, 1, 1], 0).is_none());
    }

    #[test]
    fn expired_entries_are_dropped() {
        let mut c = PrefixCache::new(PrefixLimits {
            max_bytes: 1 << 20,
            ttl: Duration::ZERO,
            min_tokens: 1,
        });
        c.insert(vec![1, 2], 0, kv(2));
        std::thread::sleep(Duration::from_millis(5));
        assert!(c.lookup(&[1, 2], 0).is_none());
        assert_eq!(c.used_bytes(), 0);
    }

    #[test]
    fn gather_and_scatter_move_the_first_positions_of_each_head() {
        // 2 heads, capacity 3, d 2: [h][pos][d].
        let buf: Vec<u32> = (0..12).collect();
        let g = gather(&buf, 2, 3, 2, 2);
        assert_eq!(g, [0, 1, 2, 3, 6, 7, 8, 9]);
        let mut dst = vec![0u32; 12];
        scatter(&mut dst, 3, &g, 2, 2, 2, 2);
        assert_eq!(dst, [0, 1, 2, 3, 0, 0, 6, 7, 8, 9, 0, 0]);
    }
}
