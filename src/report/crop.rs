//! Region crops: the part of a frame a `[cam:NAME box:…]` citation points at, cut out and
//! encoded as its own JPEG, and written into a directory without ever replacing a file.
//!
//! In: an RGB8 frame (width, height, bytes) and a [`BoxK`] in thousandths of the frame. Out:
//! JPEG bytes ([`crop_jpeg`]), or a new file in a directory ([`CropDir::write`]); for a whole
//! reply, [`ReplyCrops`] takes each sentence and writes the crops it cites. No channels,
//! no state beyond the names a [`CropDir`] has already handed out.
//!
//! File names are generated only: `NAME_x0-y0-x1-y1.jpg` (the camera name is the
//! config-validated letters, digits, `-`, `_`; anything else becomes `_`), and `…-2.jpg`,
//! `…-3.jpg`… when that name is taken. Files are created with `create_new`, so a file that is
//! already there — whoever made it — is never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::ExtendedColorType;

use super::cite::{cite, BoxK, DroppedRegion, Region};
use super::media::JPEG_QUALITY;

#[derive(Debug, thiserror::Error)]
pub enum CropError {
    #[error("frame of camera {camera:?}: {len} bytes of RGB for {width}x{height}")]
    BadFrame {
        camera: String,
        width: u32,
        height: u32,
        len: usize,
    },
    #[error("encoding the crop {bbox} of camera {camera:?}: {source}")]
    Encode {
        camera: String,
        bbox: BoxK,
        source: image::ImageError,
    },
    #[error("crops directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing crop {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The `bbox` region of an RGB8 `width`×`height` frame as a JPEG.
pub fn crop_jpeg(
    camera: &str,
    rgb: &[u8],
    width: u32,
    height: u32,
    bbox: BoxK,
) -> Result<Vec<u8>, CropError> {
    if width == 0 || height == 0 || rgb.len() != width as usize * height as usize * 3 {
        return Err(CropError::BadFrame {
            camera: camera.to_string(),
            width,
            height,
            len: rgb.len(),
        });
    }
    let (x, y, w, h) = bbox.pixels(width, height);
    let mut cut = Vec::with_capacity(w as usize * h as usize * 3);
    for row in y..y + h {
        let start = (row as usize * width as usize + x as usize) * 3;
        cut.extend_from_slice(&rgb[start..start + w as usize * 3]);
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode(&cut, w, h, ExtendedColorType::Rgb8)
        .map_err(|source| CropError::Encode {
            camera: camera.to_string(),
            bbox,
            source,
        })?;
    Ok(out)
}

/// A directory crops are written into (created if missing), under fresh names only.
#[derive(Debug)]
pub struct CropDir {
    dir: PathBuf,
}

impl CropDir {
    pub fn create(dir: &Path) -> Result<Self, CropError> {
        std::fs::create_dir_all(dir).map_err(|source| CropError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Writes `jpeg` as a new file named after the camera and box; returns its path.
    pub fn write(&self, camera: &str, bbox: BoxK, jpeg: &[u8]) -> Result<PathBuf, CropError> {
        let stem = format!(
            "{}_{}-{}-{}-{}",
            safe_name(camera),
            bbox.x0,
            bbox.y0,
            bbox.x1,
            bbox.y1
        );
        for n in 1u32.. {
            let name = if n == 1 {
                format!("{stem}.jpg")
            } else {
                format!("{stem}-{n}.jpg")
            };
            let path = self.dir.join(name);
            let file = OpenOptions::new().write(true).create_new(true).open(&path);
            match file {
                Ok(mut f) => {
                    let written = f.write_all(jpeg).and_then(|_| f.sync_all());
                    return written.map(|_| path.clone()).map_err(|source| {
                        // Ours and half-written: remove it rather than leave a broken image.
                        let _ = std::fs::remove_file(&path);
                        CropError::Write { path, source }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(CropError::Write { path, source }),
            }
        }
        unreachable!("u32 names run out only after 4 billion crops of one box")
    }
}

/// A frame crops are cut from, under the camera name a reply cites it by.
#[derive(Debug, Clone)]
pub struct CropFrame {
    pub camera: String,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// The crops of one reply: each sentence's regions cut from the frames and written to a
/// [`CropDir`] (`gemba ask --crops`).
#[derive(Debug)]
pub struct ReplyCrops {
    dir: CropDir,
    frames: Vec<CropFrame>,
    /// Files written, in order.
    pub written: Vec<PathBuf>,
    /// Region markers dropped, in order.
    pub dropped: Vec<DroppedRegion>,
}

impl ReplyCrops {
    pub fn new(dir: &Path, frames: Vec<CropFrame>) -> Result<Self, CropError> {
        Ok(Self {
            dir: CropDir::create(dir)?,
            frames,
            written: Vec::new(),
            dropped: Vec::new(),
        })
    }

    /// Writes the crops `sentence` cites; returns them with their regions.
    pub fn on_sentence(&mut self, sentence: &str) -> Result<Vec<(PathBuf, Region)>, CropError> {
        let names: Vec<&str> = self.frames.iter().map(|f| f.camera.as_str()).collect();
        let cited = cite(sentence, &names);
        self.dropped.extend(cited.dropped);
        let mut out = Vec::new();
        for r in cited.regions {
            let f = self
                .frames
                .iter()
                .find(|f| f.camera == r.camera)
                .expect("cite returns known names");
            let jpeg = crop_jpeg(&f.camera, &f.rgb, f.width, f.height, r.bbox)?;
            let path = self.dir.write(&r.camera, r.bbox, &jpeg)?;
            self.written.push(path.clone());
            out.push((path, r));
        }
        Ok(out)
    }
}

/// The camera an image file stands for: its stem without a trailing `_NN` frame number
/// (`press-2_00.jpg` → `press-2`).
pub fn camera_of_file(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('_') {
        Some((cam, n))
            if !cam.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            cam.to_string()
        }
        _ => stem,
    }
}

/// The camera name as a file-name part: letters, digits, `-`, `_`, `.` (not leading).
fn safe_name(camera: &str) -> String {
    let s: String = camera
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None if s.is_empty() => "_".to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame whose left half is red and right half blue.
    fn halves(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..h {
            for x in 0..w {
                v.extend_from_slice(if x < w / 2 {
                    &[250, 0, 0]
                } else {
                    &[0, 0, 250]
                });
            }
        }
        v
    }

    fn decode(jpeg: &[u8]) -> image::RgbImage {
        image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8()
    }

    #[test]
    fn crop_cuts_the_box_of_the_frame() {
        let rgb = halves(200, 100);
        let right = BoxK {
            x0: 600,
            y0: 100,
            x1: 1000,
            y1: 900,
        };
        let img = decode(&crop_jpeg("belt", &rgb, 200, 100, right).unwrap());
        assert_eq!(img.dimensions(), (80, 80));
        let p = img.get_pixel(40, 40);
        assert!(p[2] > 200 && p[0] < 50, "right half is blue: {p:?}");
        let left = BoxK { x0: 0, ..right };
        let left = BoxK { x1: 400, ..left };
        let p = *decode(&crop_jpeg("belt", &rgb, 200, 100, left).unwrap()).get_pixel(40, 40);
        assert!(p[0] > 200 && p[2] < 50, "left part is red: {p:?}");
        assert!(matches!(
            crop_jpeg("belt", &rgb[1..], 200, 100, right),
            Err(CropError::BadFrame { .. })
        ));
    }

    #[test]
    fn crop_dir_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CropDir::create(&tmp.path().join("new/crops")).unwrap();
        let b = BoxK {
            x0: 1,
            y0: 2,
            x1: 3,
            y1: 4,
        };
        let theirs = tmp.path().join("new/crops/press-2_1-2-3-4.jpg");
        std::fs::write(&theirs, b"not ours").unwrap();
        let a = dir.write("press-2", b, b"one").unwrap();
        let c = dir.write("press-2", b, b"two").unwrap();
        assert_eq!(a.file_name().unwrap(), "press-2_1-2-3-4-2.jpg");
        assert_eq!(c.file_name().unwrap(), "press-2_1-2-3-4-3.jpg");
        assert_eq!(std::fs::read(&theirs).unwrap(), b"not ours");
        assert_eq!(std::fs::read(&c).unwrap(), b"two");
        let odd = dir.write("../x y", b, b"three").unwrap();
        assert_eq!(odd.parent().unwrap(), tmp.path().join("new/crops"));
        assert_eq!(odd.file_name().unwrap(), "_._x_y_1-2-3-4.jpg");
    }

    #[test]
    fn reply_crops_follow_the_sentences() {
        let tmp = tempfile::tempdir().unwrap();
        let frame = CropFrame {
            camera: "press-2".into(),
            width: 200,
            height: 100,
            rgb: halves(200, 100),
        };
        let mut c = ReplyCrops::new(&tmp.path().join("out"), vec![frame]).unwrap();
        let got = c
            .on_sentence("Lamp [cam:press-2 box:0,0,500,1000] red, [cam:press-2 box:9,9,1,1] bad.")
            .unwrap();
        assert_eq!(got.len(), 1);
        let img = decode(&std::fs::read(&got[0].0).unwrap());
        assert_eq!(img.dimensions(), (100, 100));
        assert!(img.get_pixel(50, 50)[0] > 200);
        assert!(c
            .on_sentence("Ghost [cam:roof box:1,2,3,4].")
            .unwrap()
            .is_empty());
        assert_eq!(c.dropped.len(), 2);
        assert_eq!(c.written, vec![got[0].0.clone()]);
    }

    #[test]
    fn image_files_name_their_camera() {
        for (file, cam) in [
            ("frames/press-2_00.jpg", "press-2"),
            ("belt-1.png", "belt-1"),
            ("line_3_x.jpg", "line_3_x"),
            ("_12.jpg", "_12"),
        ] {
            assert_eq!(camera_of_file(Path::new(file)), cam, "{file}");
        }
    }
}
