//! The daemon's questions as the model's input: a queued [`AskInput`] (owned capture
//! [`Frame`]s and [`AudioClip`]s) borrowed as a [`Prompt`], the Engine's own input type.
//!
//! The conversion lives here, at the caller, so that `model` never imports capture
//! (`tests/layering.rs`). Nothing is copied: the prompt borrows the frames' pixels and the
//! clips' samples. No channels.

use crate::capture::{AudioClip, Frame};
use crate::daemon::worker::AskInput;
use crate::model::engine::{Prompt, PromptAudio, PromptImage};

impl<'a> From<&'a Frame> for PromptImage<'a> {
    fn from(f: &'a Frame) -> Self {
        PromptImage {
            camera: &f.camera,
            width: f.width,
            height: f.height,
            rgb: &f.rgb,
        }
    }
}

impl<'a> From<&'a AudioClip> for PromptAudio<'a> {
    fn from(c: &'a AudioClip) -> Self {
        PromptAudio {
            source: &c.source,
            sample_rate: c.sample_rate,
            samples: &c.samples,
        }
    }
}

impl<'a> From<&'a AskInput> for Prompt<'a> {
    fn from(input: &'a AskInput) -> Self {
        Prompt {
            text: &input.text,
            images: input.frames.iter().map(PromptImage::from).collect(),
            audio: input.audio.iter().map(PromptAudio::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn an_ask_input_is_borrowed_as_a_prompt_in_order() {
        let frame = |camera: &str, px: u8| Frame {
            camera: camera.into(),
            seq: 1,
            captured_at: SystemTime::UNIX_EPOCH,
            width: 2,
            height: 1,
            rgb: Arc::new(vec![px; 6]),
        };
        let input = AskInput {
            text: "What changed?".into(),
            frames: vec![frame("press-2", 7), frame("belt-1", 9)],
            audio: vec![AudioClip {
                source: "mic".into(),
                started_at: SystemTime::UNIX_EPOCH,
                sample_rate: 16_000,
                samples: Arc::new(vec![0.25; 4]),
            }],
        };
        let p = Prompt::from(&input);
        assert_eq!(p.text, "What changed?");
        let cams: Vec<_> = p.images.iter().map(|i| (i.camera, i.rgb[0])).collect();
        assert_eq!(cams, [("press-2", 7), ("belt-1", 9)]);
        assert!(std::ptr::eq(
            p.images[0].rgb,
            input.frames[0].rgb.as_slice()
        ));
        assert_eq!(
            (
                p.audio[0].source,
                p.audio[0].sample_rate,
                p.audio[0].samples
            ),
            ("mic", 16_000, &[0.25f32; 4][..])
        );
    }
}
