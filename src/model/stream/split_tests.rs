//! Splitter tests: a table of boundary cases, each fed whole, char by char and in other
//! chunkings (the same sentences every way), plus token spans and timing.

use super::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Boundary rules only: no minimum lengths, no early first fragment.
fn plain() -> SplitterConfig {
    SplitterConfig {
        min_sentence_chars: 0,
        first_fragment_min_chars: 0,
        first_fragment_at_clauses: false,
        first_fragment_force_words: 0,
    }
}

/// Minimum lengths, no clause fragment.
fn merging() -> SplitterConfig {
    SplitterConfig {
        min_sentence_chars: 20,
        first_fragment_min_chars: 20,
        first_fragment_at_clauses: false,
        first_fragment_force_words: 0,
    }
}

fn forced_words(n: usize) -> SplitterConfig {
    SplitterConfig {
        first_fragment_force_words: n,
        ..plain()
    }
}

/// Feeds `pieces` as tokens 0, 1, …; token `i` arrives at `i` ms. Returns every sentence.
fn run(config: &SplitterConfig, pieces: &[&str]) -> Vec<Sentence> {
    let mut splitter = SentenceSplitter::new(config.clone());
    let mut out = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        out.extend(splitter.push(p, i, Duration::from_millis(i as u64)));
    }
    out.extend(splitter.finish(pieces.len(), Duration::from_millis(pieces.len() as u64)));
    for (i, s) in out.iter().enumerate() {
        assert_eq!(s.index, i, "indices run 0, 1, …: {out:?}");
        assert!(
            s.token_span.0 < s.token_span.1 && s.token_span.1 <= pieces.len(),
            "{s:?}"
        );
    }
    out
}

fn texts(sentences: &[Sentence]) -> Vec<String> {
    sentences.iter().map(|s| s.text.clone()).collect()
}

/// The text cut into pieces of `n` chars.
fn chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// The text cut the way word tokenizers do: each piece starts at a space (" word").
fn word_pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in text.chars() {
        match out.last_mut() {
            Some(last) if !c.is_whitespace() || last.ends_with(char::is_whitespace) => last.push(c),
            _ => out.push(c.to_string()),
        }
    }
    out
}

/// All the ways a case is fed; each must give `expected`.
fn feedings(text: &str) -> Vec<(String, Vec<String>)> {
    let mut ways = vec![
        ("whole".to_owned(), vec![text.to_owned()]),
        ("words".to_owned(), word_pieces(text)),
    ];
    for n in [1, 2, 3, 7] {
        ways.push((format!("chunks of {n}"), chunks(text, n)));
    }
    ways
}

struct Case {
    name: &'static str,
    config: fn() -> SplitterConfig,
    input: &'static str,
    expected: &'static [&'static str],
}

const fn case(
    name: &'static str,
    config: fn() -> SplitterConfig,
    input: &'static str,
    expected: &'static [&'static str],
) -> Case {
    Case {
        name,
        config,
        input,
        expected,
    }
}

const CASES: &[Case] = &[
    // Basics and end of stream.
    case("empty input", plain, "", &[]),
    case("whitespace only", plain, "  \n \t ", &[]),
    case(
        "no stop, end of stream",
        plain,
        "The valve is open",
        &["The valve is open"],
    ),
    case(
        "two sentences",
        plain,
        "The valve is open. The pump runs.",
        &["The valve is open.", "The pump runs."],
    ),
    case(
        "question and exclamation",
        plain,
        "Is it open? Yes! Good.",
        &["Is it open?", "Yes!", "Good."],
    ),
    case(
        "stop runs",
        plain,
        "What?! Really. Ok.",
        &["What?!", "Really.", "Ok."],
    ),
    case(
        "leading and trailing whitespace",
        plain,
        "  Hello. World.   ",
        &["Hello.", "World."],
    ),
    case(
        "no space after stop",
        plain,
        "end.The next",
        &["end.The next"],
    ),
    case(
        "lowercase after question",
        plain,
        "Is it ok? yes it is.",
        &["Is it ok? yes it is."],
    ),
    // Numbers.
    case(
        "decimal",
        plain,
        "Pressure is 4.5 bar. Check it.",
        &["Pressure is 4.5 bar.", "Check it."],
    ),
    case(
        "decimal at end of stream",
        plain,
        "Pressure is 4.5",
        &["Pressure is 4.5"],
    ),
    case(
        "version inside",
        plain,
        "Update to v1.2.3 now. Then restart.",
        &["Update to v1.2.3 now.", "Then restart."],
    ),
    case(
        "version ends sentence",
        plain,
        "Running v1.2.3. Next step.",
        &["Running v1.2.3.", "Next step."],
    ),
    case(
        "year ends sentence",
        plain,
        "It was 1990. Then it broke.",
        &["It was 1990.", "Then it broke."],
    ),
    case(
        "digit after stop",
        plain,
        "Set it to 5. 6 is too high.",
        &["Set it to 5.", "6 is too high."],
    ),
    case(
        "clock time",
        plain,
        "Meet at 12:30. Bring tools.",
        &["Meet at 12:30.", "Bring tools."],
    ),
    case(
        "domain name",
        plain,
        "Visit example.com today. Then log in.",
        &["Visit example.com today.", "Then log in."],
    ),
    // Abbreviations.
    case(
        "abbreviation before lowercase",
        plain,
        "Temp. is 45 °C now. Ok.",
        &["Temp. is 45 °C now.", "Ok."],
    ),
    case(
        "unit abbreviation before a capital ends the sentence",
        plain,
        "Temp. is 35 deg. Check again in 5 min. The valve is shut.",
        &[
            "Temp. is 35 deg.",
            "Check again in 5 min.",
            "The valve is shut.",
        ],
    ),
    case(
        "unit abbreviations at the default lengths",
        SplitterConfig::default,
        "Temp. is 35 deg. Check again in 5 min. The valve is shut.",
        &[
            "Temp. is 35 deg.",
            "Check again in 5 min.",
            "The valve is shut.",
        ],
    ),
    case(
        "max and min before a number stay inside",
        plain,
        "Keep it at max. 4 bar and min. 2 bar. Done.",
        &["Keep it at max. 4 bar and min. 2 bar.", "Done."],
    ),
    case(
        "approx before number",
        plain,
        "It is approx. 5 bar. Fine.",
        &["It is approx. 5 bar.", "Fine."],
    ),
    case(
        "e.g. before capital",
        plain,
        "Use a tool, e.g. Pliers work. Done.",
        &["Use a tool, e.g. Pliers work.", "Done."],
    ),
    case(
        "e.g. before lowercase",
        plain,
        "Use tools, e.g. pliers. Done.",
        &["Use tools, e.g. pliers.", "Done."],
    ),
    case(
        "title Dr",
        plain,
        "Ask Dr. Smith today. He knows.",
        &["Ask Dr. Smith today.", "He knows."],
    ),
    case(
        "titles Mr and Mrs",
        plain,
        "Mr. and Mrs. Lee arrived. They left.",
        &["Mr. and Mrs. Lee arrived.", "They left."],
    ),
    case(
        "No before number",
        plain,
        "Open valve No. 3 first. Then wait.",
        &["Open valve No. 3 first.", "Then wait."],
    ),
    case(
        "No as a word",
        plain,
        "The answer is No. The valve stays shut.",
        &["The answer is No.", "The valve stays shut."],
    ),
    case(
        "Fig before number",
        plain,
        "See Fig. 2 for details. Ok.",
        &["See Fig. 2 for details.", "Ok."],
    ),
    case(
        "min before number",
        plain,
        "Keep min. 4 bar. Then stop.",
        &["Keep min. 4 bar.", "Then stop."],
    ),
    case(
        "dotted acronym",
        plain,
        "Built in the U.S. Army depot. Ok.",
        &["Built in the U.S. Army depot.", "Ok."],
    ),
    case(
        "German z.B. and Nr.",
        plain,
        "Das ist z.B. Öl. Ventil Nr. 5 prüfen. Gut.",
        &["Das ist z.B. Öl.", "Ventil Nr. 5 prüfen.", "Gut."],
    ),
    case(
        "company suffix",
        plain,
        "Made by Acme Inc. The parts fit.",
        &["Made by Acme Inc. The parts fit."],
    ),
    // Lists.
    case(
        "numbered list",
        plain,
        "1. Check the valve.\n2. Open the tap.",
        &["1. Check the valve.", "2. Open the tap."],
    ),
    case(
        "list after heading",
        plain,
        "Steps:\n1. Check\n2. Open",
        &["Steps:", "1. Check", "2. Open"],
    ),
    case(
        "lettered list",
        plain,
        "a. First item\nb. Second item",
        &["a. First item", "b. Second item"],
    ),
    case(
        "markdown list number",
        plain,
        "**1.** Check it. Done.",
        &["**1.** Check it.", "Done."],
    ),
    case(
        "inline list after a sentence",
        plain,
        "Do this. 2. Close it.",
        &["Do this.", "2. Close it."],
    ),
    // Ellipses.
    case(
        "ellipsis before lowercase",
        plain,
        "Wait... then go.",
        &["Wait... then go."],
    ),
    case(
        "ellipsis before capital",
        plain,
        "Wait... Then go.",
        &["Wait...", "Then go."],
    ),
    case(
        "unicode ellipsis",
        plain,
        "Hmm… Let me check.",
        &["Hmm…", "Let me check."],
    ),
    case(
        "ellipsis at end of stream",
        plain,
        "And so on...",
        &["And so on..."],
    ),
    // CJK.
    case(
        "CJK full-width stops",
        plain,
        "你好。我很好！你呢？",
        &["你好。", "我很好！", "你呢？"],
    ),
    case(
        "CJK closing bracket",
        plain,
        "他说：「好。」然后走了。",
        &["他说：「好。」", "然后走了。"],
    ),
    case(
        "CJK with spaces",
        plain,
        "你好。 我很好。",
        &["你好。", "我很好。"],
    ),
    case(
        "Japanese",
        plain,
        "はい。そうです。",
        &["はい。", "そうです。"],
    ),
    case(
        "Latin stop before CJK",
        plain,
        "OK.你好。",
        &["OK.", "你好。"],
    ),
    case(
        "CJK decimal",
        plain,
        "价格是3.5元。好的。",
        &["价格是3.5元。", "好的。"],
    ),
    case(
        "CJK ellipsis",
        plain,
        "他说……我不知道。",
        &["他说……我不知道。"],
    ),
    // Newlines.
    case(
        "newline",
        plain,
        "First line\nSecond line",
        &["First line", "Second line"],
    ),
    case(
        "blank lines",
        plain,
        "First line\n\n\nSecond line\n",
        &["First line", "Second line"],
    ),
    case(
        "CRLF",
        plain,
        "First line\r\nSecond line",
        &["First line", "Second line"],
    ),
    // Quotes and brackets after the stop.
    case(
        "straight quotes",
        plain,
        "He said \"Stop.\" Then he left.",
        &["He said \"Stop.\"", "Then he left."],
    ),
    case(
        "curly quotes then lowercase",
        plain,
        "She said “Go!” and left. Done.",
        &["She said “Go!” and left.", "Done."],
    ),
    case(
        "parentheses",
        plain,
        "(See the manual.) Next step.",
        &["(See the manual.)", "Next step."],
    ),
    case(
        "brackets",
        plain,
        "[Note: check it.] Now go.",
        &["[Note: check it.]", "Now go."],
    ),
    case(
        "markdown emphasis",
        plain,
        "**Warning.** Close it.",
        &["**Warning.**", "Close it."],
    ),
    // Emoji.
    case(
        "emoji closes the sentence",
        plain,
        "Great job! 🎉 Next task.",
        &["Great job! 🎉", "Next task."],
    ),
    case(
        "ZWJ emoji",
        plain,
        "All done! 👨‍👩‍👧 Bye now.",
        &["All done! 👨‍👩‍👧", "Bye now."],
    ),
    case(
        "several emoji",
        plain,
        "Nice. 👍🏽 🎉 Go on.",
        &["Nice. 👍🏽 🎉", "Go on."],
    ),
    case(
        "emoji at end of stream",
        plain,
        "Thanks! 🙂",
        &["Thanks! 🙂"],
    ),
    case(
        "emoji mid sentence",
        plain,
        "I 🙂 like it. Yes.",
        &["I 🙂 like it.", "Yes."],
    ),
    // Minimum lengths.
    case(
        "short sentences merge forward",
        merging,
        "Yes. The valve is open now. Ok. It works fine today.",
        &["Yes. The valve is open now.", "Ok. It works fine today."],
    ),
    case(
        "short last sentence still goes out",
        merging,
        "The valve is open now. Ok.",
        &["The valve is open now.", "Ok."],
    ),
    case(
        "short line merges",
        merging,
        "Hi\nThe valve is open now, really.",
        &["Hi\nThe valve is open now, really."],
    ),
    // Fast first fragment (default config: 12 chars, clauses on; later sentences 20 chars).
    case(
        "first fragment at comma",
        SplitterConfig::default,
        "According to the manual, the valve must stay closed. It is.",
        &[
            "According to the manual,",
            "the valve must stay closed.",
            "It is.",
        ],
    ),
    case(
        "first fragment too short",
        SplitterConfig::default,
        "Well, the valve is closed now. Good.",
        &["Well, the valve is closed now.", "Good."],
    ),
    case(
        "clauses only for the first",
        SplitterConfig::default,
        "The first sentence is here. Then, after that, more text follows.",
        &[
            "The first sentence is here.",
            "Then, after that, more text follows.",
        ],
    ),
    case(
        "first fragment at em dash",
        SplitterConfig::default,
        "The valve is stuck—use the spare one instead. Ok.",
        &["The valve is stuck—", "use the spare one instead.", "Ok."],
    ),
    case(
        "en dash range is no clause",
        SplitterConfig::default,
        "Use 3–5 bar for the main pump, not more.",
        &["Use 3–5 bar for the main pump,", "not more."],
    ),
    case(
        "first fragment at CJK comma",
        SplitterConfig::default,
        "根据设备说明书的相关要求，阀门必须保持关闭。",
        &["根据设备说明书的相关要求，", "阀门必须保持关闭。"],
    ),
    case(
        "forced first fragment",
        || forced_words(5),
        "one two three four five six seven. Eight.",
        &["one two three four five", "six seven.", "Eight."],
    ),
];

#[test]
fn table_of_cases_gives_the_same_sentences_however_fed() {
    assert!(CASES.len() >= 40);
    let mut failures = Vec::new();
    for case in CASES {
        let config = (case.config)();
        for (how, pieces) in feedings(case.input) {
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let got = texts(&run(&config, &refs));
            if got != case.expected {
                failures.push(format!(
                    "{} ({how}): {:?}\n    got      {got:?}\n    expected {:?}",
                    case.name, case.input, case.expected
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn random_chunkings_agree_with_whole_text() {
    // All cases' inputs in one reply, cut at random places, for each config.
    let text: String = CASES.iter().map(|c| c.input).collect::<Vec<_>>().join("\n");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for config in [
        plain(),
        merging(),
        SplitterConfig::default(),
        forced_words(6),
    ] {
        let whole = texts(&run(&config, &[text.as_str()]));
        assert!(whole.len() > 40, "{config:?}: {}", whole.len());
        for _ in 0..20 {
            let chars: Vec<char> = text.chars().collect();
            let mut pieces = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                let n = 1 + (rng.next_u32() % 6) as usize;
                let j = (i + n).min(chars.len());
                pieces.push(chars[i..j].iter().collect::<String>());
                i = j;
            }
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(texts(&run(&config, &refs)), whole, "{config:?}");
        }
    }
}

#[test]
fn spans_cover_a_boundary_inside_one_token() {
    let got = run(&plain(), &["Hello", " world", ". The", " end", "."]);
    let spans: Vec<_> = got
        .iter()
        .map(|s| (s.text.as_str(), s.token_span))
        .collect();
    assert_eq!(spans, [("Hello world.", (0, 3)), ("The end.", (2, 5))]);
}

#[test]
fn spans_skip_whitespace_tokens_between_sentences() {
    let got = run(&plain(), &["Done", ".", "\n\n", "Next", " one", "."]);
    let spans: Vec<_> = got
        .iter()
        .map(|s| (s.text.as_str(), s.token_span))
        .collect();
    assert_eq!(spans, [("Done.", (0, 2)), ("Next one.", (3, 6))]);
}

#[test]
fn spans_count_tokens_that_produced_no_text_yet() {
    // Tokens 0-1 and 5 are parts of characters the decoder held back ("" then the char).
    let got = run(&plain(), &["", "", "你", "好", "。", "", "我", "。"]);
    let spans: Vec<_> = got
        .iter()
        .map(|s| (s.text.as_str(), s.token_span))
        .collect();
    assert_eq!(spans, [("你好。", (0, 5)), ("我。", (5, 8))]);
}

#[test]
fn spans_for_several_sentences_in_one_token() {
    let got = run(&plain(), &["A b. C d. E f", "."]);
    let spans: Vec<_> = got
        .iter()
        .map(|s| (s.text.as_str(), s.token_span))
        .collect();
    assert_eq!(
        spans,
        [("A b.", (0, 1)), ("C d.", (0, 1)), ("E f.", (0, 2))]
    );
}

#[test]
fn last_sentence_span_runs_to_token_count() {
    let mut s = SentenceSplitter::new(plain());
    assert!(s.push("Ok", 0, Duration::ZERO).is_empty());
    assert!(s.push(".", 1, Duration::ZERO).is_empty());
    assert!(s.push("", 2, Duration::ZERO).is_empty()); // e.g. the end-of-turn token
    let last = s.finish(3, Duration::from_millis(30)).unwrap();
    assert_eq!((last.text.as_str(), last.token_span), ("Ok.", (0, 3)));
    assert_eq!(last.at, Duration::from_millis(30));
}

#[test]
fn a_sentence_is_final_when_the_next_visibly_begins() {
    let mut s = SentenceSplitter::new(plain());
    let ms = Duration::from_millis;
    assert!(s.push("The valve is open", 0, ms(10)).is_empty());
    assert!(
        s.push(".", 1, ms(20)).is_empty(),
        "could be 4.5 or an ellipsis"
    );
    assert!(
        s.push(" ", 2, ms(30)).is_empty(),
        "could be followed by lowercase"
    );
    let got = s.push("Then", 3, ms(40));
    assert_eq!(texts(&got), ["The valve is open."]);
    assert_eq!(
        (got[0].index, got[0].token_span, got[0].at),
        (0, (0, 2), ms(40))
    );
    let last = s.finish(4, ms(50)).unwrap();
    assert_eq!(
        (last.index, last.text.as_str(), last.at),
        (1, "Then", ms(50))
    );
}

#[test]
fn finish_resets_for_the_next_reply() {
    let mut s = SentenceSplitter::new(plain());
    s.push("First reply. Done", 0, Duration::ZERO);
    assert_eq!(s.finish(1, Duration::ZERO).unwrap().index, 1);
    assert_eq!(s.finish(1, Duration::ZERO), None);
    s.push("Second reply", 0, Duration::ZERO);
    let again = s.finish(1, Duration::ZERO).unwrap();
    assert_eq!(
        (again.index, again.text.as_str(), again.token_span),
        (0, "Second reply", (0, 1))
    );
}

#[test]
fn blank_stream_gives_no_sentence() {
    let mut s = SentenceSplitter::new(SplitterConfig::default());
    assert!(s.push("", 0, Duration::ZERO).is_empty());
    assert!(s.push("\n \n", 1, Duration::ZERO).is_empty());
    assert_eq!(s.finish(2, Duration::ZERO), None);
}

#[test]
fn emoji_split_across_tokens_stays_whole() {
    // 👍🏽 and a ZWJ family arrive code point by code point (as a byte-level model emits them).
    let pieces = [
        "Done", "!", " ", "👍", "🏽", " ", "👨", "\u{200D}", "👩", "\u{200D}", "👧", " ", "Next",
        ".",
    ];
    let got = run(&plain(), &pieces);
    assert_eq!(texts(&got), ["Done! 👍🏽 👨‍👩‍👧", "Next."]);
    assert_eq!(got[0].token_span, (0, 11));
}

#[test]
fn push_allocates_only_for_returned_sentences() {
    let mut s = SentenceSplitter::new(plain());
    let reply = |s: &mut SentenceSplitter| {
        for i in 0..300 {
            assert!(s.push(" word", i, Duration::ZERO).is_empty());
        }
        s.finish(300, Duration::ZERO).unwrap()
    };
    reply(&mut s); // warm-up: the buffers grow to fit a reply
    let mut last = None;
    let allocs = crate::model::alloc_count::count(|| last = Some(reply(&mut s)));
    // One allocation: the final sentence's text. None per push.
    assert_eq!(allocs, 1);
    assert_eq!(last.unwrap().text.len(), "word".len() + 299 * " word".len());
}
