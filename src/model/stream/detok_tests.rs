//! Detokenizer tests over tokenizers built here from JSON: GPT-2 byte-level BPE, Llama-style
//! SentencePiece BPE with byte fallback, a Metaspace decoder, and WordPiece (the window path).
//! The invariant everywhere: the streamed pieces concatenate to the one-shot decode, and no piece
//! carries a U+FFFD that the one-shot decode does not.

use super::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::str::FromStr;

/// GPT-2's byte → char map, written out independently of `byte_level_byte` (which inverts it).
fn byte_char(b: u8) -> char {
    let printable = |x: u8| matches!(x, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

fn bl(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_char(b)).collect()
}

fn added(id: u32, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

fn bpe_model(
    vocab: &serde_json::Map<String, Value>,
    merges: &[(String, String)],
    byte_fallback: bool,
) -> Value {
    json!({
        "type": "BPE", "dropout": null, "unk_token": if byte_fallback { json!("<unk>") } else { json!(null) },
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": byte_fallback,
        "byte_fallback": byte_fallback, "ignore_merges": false,
        "vocab": vocab, "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
    })
}

fn tokenizer(
    model: Value,
    added_tokens: Vec<Value>,
    normalizer: Value,
    pre_tokenizer: Value,
    decoder: Value,
) -> Arc<Tokenizer> {
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added_tokens,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        "decoder": decoder, "model": model,
    });
    Arc::new(Tokenizer::from_str(&doc.to_string()).expect("test tokenizer JSON"))
}

/// Byte-level BPE: the 256 byte tokens, merges that cut characters in odd places
/// (`f`+first byte of `é`, the tail of `你` + the head of `好`, a space + the first byte of 🙂),
/// a special `<|im_end|>` and a non-special added `<think>`.
fn byte_level() -> Arc<Tokenizer> {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(bl(&[b]), json!(b as u32));
    }
    let pairs: [(&[u8], &[u8]); 6] = [
        (b"f", &[0xC3]),
        (b"C", b"a"),
        (&[0xE4], &[0xBD]),
        (&[0xA0], &[0xE5]),
        (b" ", &[0xF0]),
        (b" ", b"o"),
    ];
    let mut merges = Vec::new();
    for (a, b) in pairs {
        let merged = [a, b].concat();
        let id = vocab.len() as u32;
        vocab.insert(bl(&merged), json!(id));
        merges.push((bl(a), bl(b)));
    }
    let n = vocab.len() as u32;
    let bytelevel = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    tokenizer(
        bpe_model(&vocab, &merges, false),
        vec![added(n, "<|im_end|>", true), added(n + 1, "<think>", false)],
        json!(null),
        bytelevel.clone(),
        bytelevel,
    )
}

/// The pieces of a SentencePiece-style vocabulary: specials, 256 byte tokens, some chars and
/// merges (`é` is a piece; `°`, CJK and emoji fall back to bytes).
fn sentencepiece(decoder: Value) -> Arc<Tokenizer> {
    let mut vocab = serde_json::Map::new();
    for (i, s) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(s.to_string(), json!(i));
    }
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    for c in "▁abcdefghijklmnopqrstuvwxyzCTé0123456789,.!?".chars() {
        let id = vocab.len();
        vocab.insert(c.to_string(), json!(id));
    }
    let merges: Vec<(String, String)> = [
        ("▁", "C"),
        ("▁C", "a"),
        ("▁Ca", "f"),
        ("f", "é"),
        ("▁", "o"),
        ("▁o", "k"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for (a, b) in &merges {
        let id = vocab.len();
        vocab.insert(format!("{a}{b}"), json!(id));
    }
    tokenizer(
        bpe_model(&vocab, &merges, true),
        vec![
            added(0, "<unk>", true),
            added(1, "<s>", true),
            added(2, "</s>", true),
        ],
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
        json!(null),
        decoder,
    )
}

/// Llama 2's decoder: ▁ → space, byte fallback, fuse, strip one leading space.
fn llama() -> Arc<Tokenizer> {
    sentencepiece(json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}))
}

/// A Metaspace decoder (drops the first token's ▁) followed by byte fallback.
fn metaspace_fallback() -> Arc<Tokenizer> {
    sentencepiece(json!({"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}))
}

/// A bare Metaspace decoder: byte tokens stay literal `<0x..>` text, one-shot and streamed.
fn metaspace_only() -> Arc<Tokenizer> {
    sentencepiece(
        json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}),
    )
}

/// WordPiece with cleanup: a decoder we do not stream byte-wise.
fn wordpiece() -> Arc<Tokenizer> {
    let words = [
        "[UNK]", "[CLS]", "the", "valve", "is", "open", "close", "##d", ".", ",", "do", "##n", "'",
        "t", "it",
    ];
    let vocab: serde_json::Map<String, Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    tokenizer(
        json!({"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
               "max_input_chars_per_word": 100, "vocab": vocab}),
        vec![added(0, "[UNK]", true), added(1, "[CLS]", true)],
        json!(null),
        json!({"type": "BertPreTokenizer"}),
        json!({"type": "WordPiece", "prefix": "##", "cleanup": true}),
    )
}

fn encode(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).expect("encode").get_ids().to_vec()
}

/// Streams `ids` through a decoder; returns every piece, the `finish` flush last.
fn stream(decoder: &mut TokenDecoder, ids: &[u32]) -> Vec<String> {
    let mut pieces: Vec<String> = ids
        .iter()
        .map(|&id| decoder.push(id).expect("push"))
        .collect();
    pieces.push(decoder.finish().expect("finish"));
    pieces
}

/// The core check: pieces concatenate to the one-shot decode; no piece has a U+FFFD unless the
/// one-shot decode has one.
fn assert_streams_like_one_shot(table: &Arc<DecodeTable>, ids: &[u32]) -> Vec<String> {
    let tok = table.tokenizer();
    let one_shot = tok.decode(ids, true).expect("one-shot decode");
    let pieces = stream(&mut TokenDecoder::with_table(Arc::clone(table)), ids);
    assert_eq!(pieces.concat(), one_shot, "ids {ids:?}, pieces {pieces:?}");
    if !one_shot.contains(REPLACEMENT) {
        assert!(
            pieces.iter().all(|p| !p.contains(REPLACEMENT)),
            "{pieces:?}"
        );
    }
    pieces
}

const TEXTS: &[&str] = &[
    "Café 25°C, 你好 🙂! ok",
    "ok",
    "é",
    "°°° 🙂🙂 你好你好",
    " leading space and trailing ",
    "Temp. is 4.5 bar, ok? 好!",
    "",
];

#[test]
fn gpt2_byte_map_matches_tokenizers() {
    let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
    let ours: std::collections::HashSet<char> = (0..=255u8).map(byte_char).collect();
    assert_eq!(ours.len(), 256);
    assert_eq!(ours, alphabet.into_iter().collect());
    for b in 0..=255u8 {
        assert_eq!(byte_level_byte(byte_char(b)), Some(b));
    }
    assert_eq!(byte_level_byte('\u{144}'), None);
    assert_eq!(byte_level_byte(' '), None);
}

#[test]
fn strategies_are_recognised() {
    let cases = [
        ("byte-level", byte_level(), DecodeStrategy::ByteLevel),
        ("llama", llama(), DecodeStrategy::Pieces),
        (
            "metaspace + byte fallback",
            metaspace_fallback(),
            DecodeStrategy::Pieces,
        ),
        ("metaspace only", metaspace_only(), DecodeStrategy::Pieces),
        ("wordpiece", wordpiece(), DecodeStrategy::Window),
    ];
    for (name, tok, want) in cases {
        assert_eq!(DecodeTable::new(tok).strategy(), want, "{name}");
    }
}

#[test]
fn multibyte_chars_split_across_tokens() {
    for (name, tok) in [
        ("byte-level", byte_level()),
        ("llama", llama()),
        ("metaspace", metaspace_fallback()),
    ] {
        let ids = encode(&tok, "Café 25°C, 你好 🙂! ok");
        // The test only means something if some tokens hold part of a character.
        let partial = ids
            .iter()
            .filter(|&&id| tok.decode(&[id], true).unwrap().contains(REPLACEMENT))
            .count();
        assert!(
            partial >= 4,
            "{name}: only {partial} partial tokens in {ids:?}"
        );
        for table in [
            DecodeTable::new(Arc::clone(&tok)),
            DecodeTable::window_only(Arc::clone(&tok)),
        ] {
            let strategy = table.strategy();
            let pieces = assert_streams_like_one_shot(&Arc::new(table), &ids);
            assert_eq!(
                pieces.concat(),
                "Café 25°C, 你好 🙂! ok",
                "{name} {strategy:?}"
            );
            // Held back, then emitted whole: some pushes return "".
            assert!(
                pieces.iter().any(String::is_empty),
                "{name} {strategy:?}: {pieces:?}"
            );
        }
    }
}

#[test]
fn many_texts_every_tokenizer_both_paths() {
    for tok in [
        byte_level(),
        llama(),
        metaspace_fallback(),
        metaspace_only(),
        wordpiece(),
    ] {
        let tables = [
            Arc::new(DecodeTable::new(Arc::clone(&tok))),
            Arc::new(DecodeTable::window_only(Arc::clone(&tok))),
        ];
        for text in TEXTS.iter().chain(&["the valve is closed, don't open it."]) {
            let ids = encode(&tok, text);
            for table in &tables {
                assert_streams_like_one_shot(table, &ids);
            }
        }
    }
}

#[test]
fn byte_level_emits_each_char_once_complete() {
    let tok = byte_level();
    let table = Arc::new(DecodeTable::new(Arc::clone(&tok)));
    let mut d = TokenDecoder::with_table(table);
    let id = |bytes: &[u8]| tok.token_to_id(&bl(bytes)).unwrap();
    // 🙂 = F0 9F 99 82, the first byte merged with a space.
    assert_eq!(d.push(id(b"o")).unwrap(), "o");
    assert_eq!(d.push(id(&[b' ', 0xF0])).unwrap(), " ");
    assert_eq!(d.push(id(&[0x9F])).unwrap(), "");
    assert_eq!(d.push(id(&[0x99])).unwrap(), "");
    assert_eq!(d.push(id(&[0x82])).unwrap(), "🙂");
    // 你好 = E4 BD A0 | E5 A5 BD, cut as [E4 BD] [A0 E5] [A5] [BD].
    assert_eq!(d.push(id(&[0xE4, 0xBD])).unwrap(), "");
    assert_eq!(d.push(id(&[0xA0, 0xE5])).unwrap(), "你");
    assert_eq!(d.push(id(&[0xA5])).unwrap(), "");
    assert_eq!(d.push(id(&[0xBD])).unwrap(), "好");
    assert_eq!(d.finish().unwrap(), "");
}

#[test]
fn special_tokens_are_skipped_even_inside_a_character() {
    let tok = byte_level();
    let end = tok.token_to_id("<|im_end|>").unwrap();
    let think = tok.token_to_id("<think>").unwrap();
    let mut ids = encode(&tok, "Café 你好");
    ids.insert(0, think);
    ids.insert(3, end); // between "f\xC3" and "\xA9"
    ids.push(end);
    let table = Arc::new(DecodeTable::new(tok));
    let pieces = assert_streams_like_one_shot(&table, &ids);
    assert_eq!(pieces.concat(), "<think>Café 你好");
}

#[test]
fn sentencepiece_leading_space_and_first_token() {
    for tok in [llama(), metaspace_fallback()] {
        let bos = tok.token_to_id("<s>").unwrap();
        let mut ids = encode(&tok, "ok Café");
        ids.insert(0, bos);
        let table = Arc::new(DecodeTable::new(Arc::clone(&tok)));
        let pieces = assert_streams_like_one_shot(&table, &ids);
        // <s> skipped, "▁ok" loses its space (first token), "▁Caf" keeps it.
        assert_eq!(pieces[..3], ["", "ok", " Caf"], "{pieces:?}");
        // Across replies: reset gives the first-token rule back.
        let mut d = TokenDecoder::with_table(table);
        for _ in 0..2 {
            assert_eq!(stream(&mut d, &ids).concat(), "ok Café");
        }
    }
    // `always`-scheme Metaspace: same rule; byte tokens stay literal.
    let tok = metaspace_only();
    let ids = encode(&tok, "ok °");
    let pieces = assert_streams_like_one_shot(&Arc::new(DecodeTable::new(Arc::clone(&tok))), &ids);
    assert_eq!(pieces.concat(), "ok <0xC2><0xB0>");
}

#[test]
fn byte_fallback_invalid_bytes() {
    let tok = llama();
    let table = Arc::new(DecodeTable::new(Arc::clone(&tok)));
    let b = |x: u8| tok.token_to_id(&format!("<0x{x:02X}>")).unwrap();
    let a = tok.token_to_id("a").unwrap();
    // Cases where one-shot and stream agree exactly: a lone invalid byte; an unfinished
    // character cut off by a text token (one U+FFFD per byte); one cut off by the end.
    for ids in [
        vec![a, b(0xFF), a],
        vec![b(0xE4), b(0xBD), a],
        vec![a, b(0xE4), b(0xBD)],
        vec![b(0xBD), b(0xA0), a],
    ] {
        assert_streams_like_one_shot(&table, &ids);
    }
    let mut d = TokenDecoder::with_table(Arc::clone(&table));
    assert_eq!(
        stream(&mut d, &[b(0xE4), b(0xBD), a]),
        ["", "", "\u{FFFD}\u{FFFD}a", ""]
    );
    assert_eq!(
        stream(&mut d, &[a, b(0xE4), b(0xBD)]),
        ["a", "", "", "\u{FFFD}\u{FFFD}"]
    );
    // The documented difference: a run mixing a whole character with an invalid byte.
    let mixed = [b(0xC3), b(0xA9), b(0xFF)];
    assert_eq!(
        tok.decode(&mixed, true).unwrap(),
        "\u{FFFD}\u{FFFD}\u{FFFD}"
    );
    assert_eq!(stream(&mut d, &mixed).concat(), "é\u{FFFD}");
}

#[test]
fn random_ids_byte_level_match_one_shot_exactly() {
    // Any id sequence, valid UTF-8 or not, specials anywhere: the byte-level stream is exactly
    // `from_utf8_lossy` of the whole reply.
    let tok = byte_level();
    let n = tok.get_vocab_size(true) as u32;
    let table = Arc::new(DecodeTable::new(tok));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..500 {
        let len = (rng.next_u32() % 30) as usize;
        let ids: Vec<u32> = (0..len).map(|_| rng.next_u32() % n).collect();
        assert_streams_like_one_shot(&table, &ids);
    }
}

#[test]
fn random_valid_texts_match_one_shot_on_every_path() {
    // Valid text with specials sprinkled in: exact on every tokenizer, both paths.
    let pool = [
        "a", "ok", " ", "é", "°", "你", "好", "🙂", "!", "C", "f", ",", "👍🏽", "😀", "ß",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for tok in [
        byte_level(),
        llama(),
        metaspace_fallback(),
        metaspace_only(),
    ] {
        let specials: Vec<u32> = ["<|im_end|>", "<s>", "</s>"]
            .iter()
            .filter_map(|s| tok.token_to_id(s))
            .collect();
        let tables = [
            Arc::new(DecodeTable::new(Arc::clone(&tok))),
            Arc::new(DecodeTable::window_only(Arc::clone(&tok))),
        ];
        for _ in 0..150 {
            let text: String = (0..rng.next_u32() % 12)
                .map(|_| pool[rng.next_u32() as usize % pool.len()])
                .collect();
            let mut ids = encode(&tok, &text);
            for _ in 0..rng.next_u32() % 3 {
                let at = rng.next_u32() as usize % (ids.len() + 1);
                ids.insert(at, specials[rng.next_u32() as usize % specials.len()]);
            }
            for table in &tables {
                assert_streams_like_one_shot(table, &ids);
            }
        }
    }
}

#[test]
fn unknown_ids_are_errors_naming_the_id() {
    for tok in [byte_level(), llama(), wordpiece()] {
        let n = tok.get_vocab_size(true) as u32;
        let mut d = TokenDecoder::new(tok);
        match d.push(n + 7) {
            Err(StreamError::UnknownToken { id, vocab_size }) => {
                assert_eq!((id, vocab_size), (n + 7, n as usize));
            }
            other => panic!("{other:?}"),
        }
        let err = d.push(u32::MAX).unwrap_err().to_string();
        assert!(err.contains(&u32::MAX.to_string()), "{err}");
    }
}

#[test]
fn push_allocates_only_the_returned_string() {
    for tok in [byte_level(), llama()] {
        let table = Arc::new(DecodeTable::new(Arc::clone(&tok)));
        let mut ids = encode(&tok, "Café 25°C, 你好 🙂! ok ok ok");
        if let Some(end) = tok.token_to_id("<|im_end|>") {
            ids.push(end);
        }
        let mut d = TokenDecoder::with_table(table);
        stream(&mut d, &ids); // warm-up
                              // The first token of a SentencePiece reply is looked up afresh (first-token rule):
                              // start counting after it.
        d.push(ids[0]).unwrap();
        for &id in &ids[1..] {
            let mut piece = String::new();
            let allocs = crate::model::alloc_count::count(|| piece = d.push(id).unwrap());
            assert_eq!(
                allocs,
                usize::from(!piece.is_empty()),
                "token {id} → {piece:?}"
            );
        }
    }
}

#[test]
fn wordpiece_falls_back_to_the_window() {
    let tok = wordpiece();
    let table = Arc::new(DecodeTable::new(Arc::clone(&tok)));
    assert_eq!(table.strategy(), DecodeStrategy::Window);
    let ids = encode(&tok, "the valve is closed, don't open it.");
    let pieces = assert_streams_like_one_shot(&table, &ids);
    // (`tokenizers` cleans up per token, so the apostrophe stays spaced — one-shot too.)
    assert_eq!(pieces.concat(), "the valve is closed, don ' t open it.");
    // The window stays small: decoding never looks back further than a few tokens.
    let mut d = TokenDecoder::with_table(table);
    for _ in 0..200 {
        for &id in &ids {
            d.push(id).unwrap();
        }
    }
    assert!(
        d.window.ids.len() <= 40,
        "window grew to {}",
        d.window.ids.len()
    );
}
