//! `.npz` files (numpy's zip of `.npy` arrays): how `gemba preprocess` writes the tensors a
//! session would receive, and how tests read references back.
//!
//! Written by hand on top of the `zip` crate rather than with an npy crate: the format is one
//! short text header per array, we need exactly six element types (including `float16`, and
//! `bfloat16`, which numpy lacks — it is stored as its raw `uint16` bits), and entries are stored
//! uncompressed like `numpy.savez`, so reading needs nothing but the zip container.
//!
//! In: named [`HostTensor`]s. Out: a file numpy reads with `np.load`; and back.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::tensor::{HostTensor, TensorData};

/// Errors reading or writing `.npz` files; each names the file and, where known, the array.
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {err}")]
    Zip {
        path: PathBuf,
        err: zip::result::ZipError,
    },
    #[error("{path}: array {name}: {detail}")]
    Format {
        path: PathBuf,
        name: String,
        detail: String,
    },
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn descr(data: &TensorData) -> &'static str {
    match data {
        TensorData::F32(_) => "<f4",
        TensorData::F16(_) => "<f2",
        // numpy has no bfloat16: keep the bits.
        TensorData::BF16(_) => "<u2",
        TensorData::I64(_) => "<i8",
        TensorData::I32(_) => "<i4",
        TensorData::Bool(_) => "|b1",
    }
}

/// One array as `.npy` bytes (format version 1.0, C order, little-endian).
pub fn npy_bytes(t: &HostTensor) -> Vec<u8> {
    let shape = match t.shape.len() {
        0 => "()".to_owned(),
        1 => format!("({},)", t.shape[0]),
        _ => format!(
            "({})",
            t.shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        descr(&t.data),
        shape
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    match &t.data {
        TensorData::F32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::F16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::BF16(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I64(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::I32(v) => v
            .iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        TensorData::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
    }
    out
}

/// Write named tensors to an uncompressed `.npz` file (one `NAME.npy` entry each).
pub fn write_npz(path: &Path, tensors: &[(&str, &HostTensor)]) -> Result<(), NpzError> {
    let io = |err| NpzError::Io {
        path: path.to_owned(),
        err,
    };
    let zerr = |err| NpzError::Zip {
        path: path.to_owned(),
        err,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, t) in tensors {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(zerr)?;
        zip.write_all(&npy_bytes(t)).map_err(io)?;
    }
    let mut inner = zip.finish().map_err(zerr)?;
    inner.flush().map_err(io)
}

/// Read every array of an `.npz` file (uncompressed, little-endian, C order), in file order.
pub fn read_npz(path: &Path) -> Result<Vec<(String, HostTensor)>, NpzError> {
    let io = |err| NpzError::Io {
        path: path.to_owned(),
        err,
    };
    let zerr = |err| NpzError::Zip {
        path: path.to_owned(),
        err,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut archive = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(zerr)?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zerr)?;
        let name = entry.name().trim_end_matches(".npy").to_owned();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(io)?;
        let tensor = parse_npy(&bytes).map_err(|detail| NpzError::Format {
            path: path.to_owned(),
            name: name.clone(),
            detail,
        })?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Parse one `.npy` array.
pub fn parse_npy(bytes: &[u8]) -> Result<HostTensor, String> {
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err("not an .npy array (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated or non-text header")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or(format!("header lacks {key}"))?;
        Ok(header[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("bad descr")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape_text = field("shape")?;
    let shape_text = &shape_text[1..shape_text.find(')').ok_or("bad shape")?];
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|e| format!("bad shape {shape_text:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + header_len..];
    let take = |width: usize| -> Result<std::slice::ChunksExact<'_, u8>, String> {
        let body = body.get(..n * width).ok_or(format!(
            "data holds {} bytes, shape needs {}",
            body.len(),
            n * width
        ))?;
        Ok(body.chunks_exact(width))
    };
    let data = match descr {
        "<f4" => TensorData::F32(
            take(4)?
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<f2" => TensorData::F16(
            take(2)?
                .map(|c| f16::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<u2" => TensorData::BF16(
            take(2)?
                .map(|c| bf16::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<i8" => TensorData::I64(
            take(8)?
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "<i4" => TensorData::I32(
            take(4)?
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        ),
        "|b1" => TensorData::Bool(take(1)?.map(|c| c[0] != 0).collect()),
        other => return Err(format!("unsupported element type {other:?}")),
    };
    Ok(HostTensor { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_64_bytes_and_round_trips() {
        let tensors = [
            (
                "a",
                HostTensor::new(
                    vec![2, 3],
                    TensorData::F32(vec![0.5, -1.0, 2.0, 3.0, 4.0, 5.5]),
                ),
            ),
            ("ids", HostTensor::i64(vec![1, 4], vec![1, 200010, -3, 7])),
            ("mask", HostTensor::bool(vec![3], vec![true, false, true])),
            ("mode", HostTensor::i64(vec![], vec![3])),
            (
                "h",
                HostTensor::new(vec![1], TensorData::F16(vec![f16::from_f32(0.25)])),
            ),
            (
                "b",
                HostTensor::new(vec![1], TensorData::BF16(vec![bf16::from_f32(-0.5)])),
            ),
            (
                "i",
                HostTensor::new(vec![2], TensorData::I32(vec![-1, 200011])),
            ),
        ];
        for (_, t) in &tensors {
            let b = npy_bytes(t);
            let header_len = usize::from(u16::from_le_bytes([b[8], b[9]]));
            assert_eq!((10 + header_len) % 64, 0);
            assert_eq!(b[10 + header_len - 1], b'\n');
            assert_eq!(&parse_npy(&b).unwrap(), t);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npz");
        let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        write_npz(&path, &refs).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back.len(), tensors.len());
        for ((n, t), (bn, bt)) in tensors.iter().zip(&back) {
            assert_eq!((*n, t), (bn.as_str(), bt));
        }
    }

    #[test]
    fn header_text_matches_numpy() {
        let t = HostTensor::i64(vec![5], vec![0; 5]);
        let b = npy_bytes(&t);
        let text = std::str::from_utf8(&b[10..]).unwrap();
        assert!(text.starts_with("{'descr': '<i8', 'fortran_order': False, 'shape': (5,), }"));
    }

    #[test]
    fn bad_arrays_are_errors() {
        assert!(parse_npy(b"nope").is_err());
        let mut b = npy_bytes(&HostTensor::i64(vec![4], vec![1, 2, 3, 4]));
        b.truncate(b.len() - 3);
        assert!(parse_npy(&b).unwrap_err().contains("data holds"));
    }
}
