//! Region citations through the answer stream: a reply holding `[cam:NAME box:…]` markers, cut
//! at every char boundary (in two and three pieces, and char by char) and through the demo
//! model's real tokenizer token by token, leaves the same clean sentences and the same regions
//! every way; malformed boxes are dropped and counted the same every way.

use std::sync::Arc;
use std::time::Duration;

use gemba::model::stream::{DecodeTable, SentenceSplitter, SplitterConfig, TokenDecoder};
use gemba::report::cite::{cite, BoxK, Region};

const CAMS: &[&str] = &["press-2", "belt"];

/// Spaces inside the boxes and a comma after the first clause tempt the splitter's early
/// first-fragment cut; one ghost camera and one flipped box must be dropped.
const REPLY: &str = "The press lamp [cam:press-2 box:120, 40, 260, 180] is amber, the guard \
    is closed. Belt speed [cam:belt BOX: (0,500, 1000,1000)] looks normal. A ghost \
    [cam:roof box:1,2,3,4] and a bad box [cam:belt box:900,0,100,50] are dropped. \
    Überall grün [cam:belt box:10,10,20,20]。Done [cam:belt].";

fn want_regions() -> Vec<Region> {
    let r = |camera: &str, x0, y0, x1, y1| Region {
        camera: camera.to_string(),
        bbox: BoxK { x0, y0, x1, y1 },
    };
    vec![
        r("press-2", 120, 40, 260, 180),
        r("belt", 0, 500, 1000, 1000),
        r("belt", 10, 10, 20, 20),
    ]
}

/// What the report gets from a stream: each sentence's clean text, all regions, drops.
#[derive(Debug, PartialEq)]
struct Outcome {
    texts: Vec<String>,
    regions: Vec<Region>,
    dropped: usize,
}

fn configs() -> Vec<SplitterConfig> {
    vec![
        SplitterConfig::default(),
        SplitterConfig {
            min_sentence_chars: 0,
            first_fragment_min_chars: 0,
            first_fragment_at_clauses: true,
            first_fragment_force_words: 2,
        },
    ]
}

fn run(config: &SplitterConfig, pieces: &[&str]) -> Outcome {
    let mut splitter = SentenceSplitter::new(config.clone());
    let mut sentences = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        sentences.extend(splitter.push(p, i, Duration::ZERO));
    }
    sentences.extend(splitter.finish(pieces.len(), Duration::ZERO));
    outcome(sentences.iter().map(|s| s.text.as_str()))
}

fn outcome<'a>(sentences: impl Iterator<Item = &'a str>) -> Outcome {
    let mut out = Outcome {
        texts: Vec::new(),
        regions: Vec::new(),
        dropped: 0,
    };
    for s in sentences {
        let c = cite(s, CAMS);
        assert!(
            !c.text.contains("[cam") && !c.text.contains("box:") && !c.text.contains(']'),
            "a marker leaked into {:?} (sentence {s:?})",
            c.text
        );
        out.texts.push(c.text);
        out.regions.extend(c.regions);
        out.dropped += c.dropped.len();
    }
    out
}

fn check(whole: &Outcome, got: &Outcome, how: &str) {
    assert_eq!(got, whole, "{how}");
}

#[test]
fn whole_reply_gives_the_regions_and_drops() {
    for config in configs() {
        let whole = run(&config, &[REPLY]);
        assert_eq!(whole.regions, want_regions(), "{config:?}");
        assert_eq!(whole.dropped, 2, "{config:?}");
        let joined = whole.texts.join(" ");
        assert!(joined.starts_with("The press lamp is amber,"), "{joined}");
        assert!(joined.contains("Belt speed looks normal."), "{joined}");
        assert!(
            joined.contains("A ghost and a bad box are dropped."),
            "{joined}"
        );
        assert!(joined.ends_with("Überall grün。 Done."), "{joined}");
    }
}

#[test]
fn every_char_boundary_split_gives_the_same_outcome() {
    let cuts: Vec<usize> = REPLY.char_indices().map(|(i, _)| i).skip(1).collect();
    for config in configs() {
        let whole = run(&config, &[REPLY]);
        for &a in &cuts {
            check(
                &whole,
                &run(&config, &[&REPLY[..a], &REPLY[a..]]),
                &format!("cut at {a}"),
            );
        }
        // Every pair of cuts up to a marker's length apart: each marker cut twice, at every
        // pair of places (pairs further apart are two single cuts, covered above).
        for (n, &a) in cuts.iter().enumerate() {
            for &b in cuts[n + 1..].iter().take_while(|&&b| b - a <= 40) {
                let pieces = [&REPLY[..a], &REPLY[a..b], &REPLY[b..]];
                check(&whole, &run(&config, &pieces), &format!("cuts at {a}, {b}"));
            }
        }
        let chars: Vec<String> = REPLY.chars().map(String::from).collect();
        let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
        check(&whole, &run(&config, &chars), "char by char");
    }
}

#[test]
fn real_tokenizer_token_by_token_gives_the_same_outcome() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/tokenizer.json");
    let tok = Arc::new(tokenizers::Tokenizer::from_file(path).expect("demo tokenizer"));
    let ids = tok.encode(REPLY, false).expect("encode").get_ids().to_vec();
    assert!(ids.len() > 40, "the reply is many tokens: {}", ids.len());
    for config in configs() {
        let whole = run(&config, &[REPLY]);
        {
            let table = DecodeTable::new(Arc::clone(&tok));
            let mut decoder = TokenDecoder::with_table(Arc::new(table));
            let mut splitter = SentenceSplitter::new(config.clone());
            let mut sentences = Vec::new();
            for (i, &id) in ids.iter().enumerate() {
                let text = decoder.push(id).expect("decode");
                sentences.extend(splitter.push(&text, i, Duration::ZERO));
            }
            let tail = decoder.finish().expect("decode tail");
            sentences.extend(splitter.push(&tail, ids.len(), Duration::ZERO));
            sentences.extend(splitter.finish(ids.len() + 1, Duration::ZERO));
            let got = outcome(sentences.iter().map(|s| s.text.as_str()));
            check(&whole, &got, &format!("{} tokens, {config:?}", ids.len()));
        }
    }
}
