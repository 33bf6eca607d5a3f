//! Fuzz the configuration parsers: the daemon's TOML (merged over a board profile) and a bundle's
//! genai_config.json. Any text gives settings or an error naming the file, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match gemba::config::Settings::from_str(text, Path::new("/fuzz/gemba.toml"), Path::new("/fuzz")) {
        Ok(s) => assert!(!s.board.is_empty()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Err(e) = gemba::model::genai_config::GenaiConfig::parse(text, Path::new("/fuzz/genai_config.json")) {
        assert!(e.to_string().starts_with("/fuzz/genai_config.json"));
    }
});
