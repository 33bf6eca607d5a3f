//! JPEG decoding with IJG libjpeg 9's arithmetic, so decoded pixels match what ORT-GenAI's
//! processor sees bit for bit.
//!
//! onnxruntime-extensions decodes images with the IJG libjpeg 9e that dlib bundles. Its output
//! differs from libjpeg-turbo's (and zune-jpeg's, and every decoder that follows libjpeg 6b) in
//! two ways that matter here: subsampled chroma is reconstructed by a *scaled* inverse DCT
//! (16×16, 16×8 or 8×16 points from the 8×8 coefficients, libjpeg ≥ 7's "DCT scaling") rather
//! than by triangle-filter upsampling, and its integer IDCT rounds in its own way. On a 4:2:0
//! photo that moves chroma-heavy pixels by many levels — and one level is 0.0078 after
//! normalisation, eight times the 1e-3 the pre-processing must stay within. So gemba decodes
//! JPEG itself, following libjpeg 9's definitions: `ISLOW` integer IDCTs (13-bit constants,
//! 2 pass-1 bits, the masked range limit), the same scaled-DCT choice per component, box
//! upsampling for what scaling leaves, and the fixed-point YCbCr → RGB tables.
//!
//! Supported: baseline, extended sequential and progressive Huffman JPEG, 8-bit, 1 or 3
//! components, any power-of-two-compatible sampling, restart intervals. Refused with a clear
//! error: arithmetic coding, lossless, 12-bit, CMYK/YCCK (the reference refuses those too), and
//! libjpeg 9's SmartScale extensions.
//!
//! In: the file's bytes. Out: interleaved RGB8 ([`decode_rgb`]) or just the frame size
//! ([`read_dimensions`]) so callers can refuse huge images before any pixel is allocated.

/// What went wrong decoding a JPEG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    #[error("truncated: {0}")]
    Truncated(&'static str),
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn corrupt<T>(msg: impl Into<String>) -> Result<T, JpegError> {
    Err(JpegError::Corrupt(msg.into()))
}

/// Zig-zag index → natural (row-major) index, with 16 guard entries as libjpeg has so a
/// corrupt run length lands on the last coefficient instead of outside the block.
const NATURAL_ORDER: [usize; 80] = {
    const ZIGZAG: [usize; 64] = [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
        20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ];
    let mut out = [63usize; 80];
    let mut i = 0;
    while i < 64 {
        out[i] = ZIGZAG[i];
        i += 1;
    }
    out
};

/// A canonical Huffman table, with a lookahead table for codes of up to 9 bits.
#[derive(Clone)]
struct Huffman {
    /// Largest code of each length (index 1..=16), -1 if none; `maxcode[17]` is a sentinel.
    maxcode: [i32; 18],
    /// `values` index offset for each code length.
    valoffset: [i32; 17],
    values: Vec<u8>,
    /// For each 9-bit prefix: `(length, value)`, length 0 when the code is longer.
    lookup: Vec<(u8, u8)>,
}

const LOOKAHEAD: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Self, JpegError> {
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || total != values.len() {
            return corrupt("bad Huffman table size");
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKAHEAD];
        let mut code: i32 = 0;
        let mut k = 0usize;
        for len in 1..=16usize {
            let n = usize::from(counts[len - 1]);
            valoffset[len] = k as i32 - code;
            for _ in 0..n {
                // Codes of one length must fit in that many bits ("bogus Huffman table").
                if code >= (1 << len) {
                    return corrupt("bogus Huffman table definition");
                }
                if len as u32 <= LOOKAHEAD {
                    let shift = LOOKAHEAD - len as u32;
                    let base = (code as usize) << shift;
                    for entry in &mut lookup[base..base + (1 << shift)] {
                        *entry = (len as u8, values[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len] = code - 1;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Huffman {
            maxcode,
            valoffset,
            values: values.to_vec(),
            lookup,
        })
    }
}

/// Entropy-coded data reader: byte stuffing removed, zeros fed once a marker (or the end of
/// the data) is reached, as libjpeg does.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    bits: u32,
    at_marker: bool,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            acc: 0,
            bits: 0,
            at_marker: false,
        }
    }

    fn fill(&mut self) {
        while self.bits <= 56 {
            let mut byte = 0u8;
            if !self.at_marker {
                match self.data.get(self.pos) {
                    Some(&0xFF) => match self.data.get(self.pos + 1) {
                        Some(0x00) => {
                            byte = 0xFF;
                            self.pos += 2;
                        }
                        _ => self.at_marker = true,
                    },
                    Some(&b) => {
                        byte = b;
                        self.pos += 1;
                    }
                    None => self.at_marker = true,
                }
            }
            self.acc |= u64::from(byte) << (56 - self.bits);
            self.bits += 8;
        }
    }

    fn bits(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        if self.bits < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as i32;
        self.acc <<= n;
        self.bits -= n;
        v
    }

    fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    fn decode(&mut self, table: &Huffman) -> Result<u8, JpegError> {
        if self.bits < 16 {
            self.fill();
        }
        let peek = (self.acc >> (64 - LOOKAHEAD)) as usize;
        let (len, value) = table.lookup[peek];
        if len > 0 {
            self.acc <<= len;
            self.bits -= u32::from(len);
            return Ok(value);
        }
        let mut code = self.bits(LOOKAHEAD);
        let mut len = LOOKAHEAD as usize;
        while code > table.maxcode[len] {
            code = (code << 1) | self.bits(1);
            len += 1;
        }
        if len > 16 {
            return corrupt("bad Huffman code");
        }
        Ok(table.values[(table.valoffset[len] + code) as usize])
    }

    /// Skip to the restart marker expected after an interval; reset the bit buffer.
    fn restart(&mut self, expected: u8) -> Result<(), JpegError> {
        self.acc = 0;
        self.bits = 0;
        self.at_marker = false;
        // The interval's padding bits are dropped; its marker is next (after any fill bytes).
        let (after, m) = next_marker(self.data, self.pos)?;
        if m != 0xD0 + expected {
            return corrupt(format!(
                "expected restart marker RST{expected}, found marker {m:02x}"
            ));
        }
        self.pos = after;
        Ok(())
    }
}

/// `HUFF_EXTEND`: a `bits`-bit magnitude category value to its signed coefficient.
fn extend(v: i32, bits: u32) -> i32 {
    if bits == 0 {
        0
    } else if v < (1 << (bits - 1)) {
        v + (-1 << bits) + 1
    } else {
        v
    }
}

#[derive(Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Quantisation table latched at the component's first scan (as libjpeg does).
    quant: Option<[u16; 64]>,
    /// Blocks covering the image.
    width_blocks: usize,
    height_blocks: usize,
    /// Blocks stored: the image's, padded to whole MCUs.
    stride_blocks: usize,
    rows_blocks: usize,
    coefs: Vec<i16>,
    dc_pred: i32,
    /// Samples per block side after the scaled IDCT (8 or 16).
    dct_h: usize,
    dct_v: usize,
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    comps: Vec<Component>,
    max_h: usize,
    max_v: usize,
    mcus_x: usize,
    mcus_y: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ColorSpace {
    Gray,
    YCbCr,
    Rgb,
}

fn be16(data: &[u8], at: usize) -> Result<usize, JpegError> {
    match data.get(at..at + 2) {
        Some(b) => Ok(usize::from(u16::from_be_bytes([b[0], b[1]]))),
        None => Err(JpegError::Truncated("marker segment")),
    }
}

/// One marker segment's payload (after the length field).
fn segment(data: &[u8], pos: usize) -> Result<&[u8], JpegError> {
    let len = be16(data, pos)?;
    if len < 2 {
        return corrupt("marker segment length below 2");
    }
    data.get(pos + 2..pos + len)
        .ok_or(JpegError::Truncated("marker segment"))
}

/// Position just after the next marker at or after `pos`, and the marker code.
fn next_marker(data: &[u8], mut pos: usize) -> Result<(usize, u8), JpegError> {
    loop {
        // Skip anything that is not a marker prefix (libjpeg warns about "extraneous bytes").
        while data.get(pos).is_some_and(|&b| b != 0xFF) {
            pos += 1;
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        match data.get(pos) {
            None => return Err(JpegError::Truncated("no end-of-image marker")),
            Some(0x00) => pos += 1,
            Some(&m) => return Ok((pos + 1, m)),
        }
    }
}

fn parse_sof(payload: &[u8], marker: u8) -> Result<Frame, JpegError> {
    if payload.len() < 6 {
        return Err(JpegError::Truncated("frame header"));
    }
    if payload[0] != 8 {
        return Err(JpegError::Unsupported(format!(
            "{}-bit samples",
            payload[0]
        )));
    }
    let height = usize::from(u16::from_be_bytes([payload[1], payload[2]]));
    let width = usize::from(u16::from_be_bytes([payload[3], payload[4]]));
    let n = usize::from(payload[5]);
    if payload.len() != 6 + 3 * n {
        return corrupt("frame header length");
    }
    match n {
        1 | 3 => {}
        4 => {
            return Err(JpegError::Unsupported(
                "CMYK/YCCK (4-component) JPEG".into(),
            ))
        }
        _ => return Err(JpegError::Unsupported(format!("{n}-component JPEG"))),
    }
    let mut comps = Vec::with_capacity(n);
    for c in payload[6..].chunks_exact(3) {
        let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return corrupt("bad sampling factors");
        }
        if c[2] > 3 {
            return corrupt("bad quantisation table index");
        }
        comps.push(Component {
            id: c[0],
            h,
            v,
            tq: usize::from(c[2]),
            quant: None,
            width_blocks: 0,
            height_blocks: 0,
            stride_blocks: 0,
            rows_blocks: 0,
            coefs: Vec::new(),
            dc_pred: 0,
            dct_h: 8,
            dct_v: 8,
        });
    }
    let max_h = comps.iter().map(|c| c.h).max().unwrap_or(1);
    let max_v = comps.iter().map(|c| c.v).max().unwrap_or(1);
    Ok(Frame {
        width,
        height,
        progressive: marker == 0xC2,
        comps,
        max_h,
        max_v,
        mcus_x: width.div_ceil(8 * max_h),
        mcus_y: height.div_ceil(8 * max_v),
    })
}

/// The frame header's width and height, without decoding anything else.
pub fn read_dimensions(data: &[u8]) -> Result<(usize, usize), JpegError> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return corrupt("no start-of-image marker");
    }
    let mut pos = 2;
    loop {
        let (after, m) = next_marker(data, pos)?;
        match m {
            0xC0..=0xCF if m != 0xC4 && m != 0xC8 && m != 0xCC => {
                let f = parse_sof(segment(data, after)?, m)?;
                return Ok((f.width, f.height));
            }
            0xD9 | 0xDA => return corrupt("no frame header before the scan"),
            0x01 | 0xD0..=0xD7 => pos = after,
            _ => pos = after + be16(data, after)?,
        }
    }
}

/// Decode a JPEG to interleaved RGB8, as libjpeg 9 does with its default settings
/// (`JDCT_ISLOW`, "fancy" = DCT-scaled chroma, RGB output).
///
/// Frames with more than `max_pixels` pixels are refused before anything is allocated.
pub fn decode_rgb(data: &[u8], max_pixels: usize) -> Result<(usize, usize, Vec<u8>), JpegError> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return corrupt("no start-of-image marker");
    }
    let mut qt: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut restart_interval = 0usize;
    let mut frame: Option<Frame> = None;
    let (mut jfif, mut adobe) = (false, None::<u8>);
    let mut scans = 0usize;
    let mut pos = 2;
    loop {
        let (after, m) = next_marker(data, pos)?;
        match m {
            0xD8 => return corrupt("second start-of-image marker"),
            0xD9 => break,
            0x01 | 0xD0..=0xD7 => pos = after,
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return corrupt("more than one frame header");
                }
                let mut f = parse_sof(segment(data, after)?, m)?;
                if f.width == 0 || f.height == 0 {
                    return corrupt("empty image (0 width or height)");
                }
                if f.width * f.height > max_pixels {
                    return Err(JpegError::Unsupported(format!(
                        "{}x{} is above the {max_pixels}-pixel limit",
                        f.width, f.height
                    )));
                }
                setup_components(&mut f);
                frame = Some(f);
                pos = after + be16(data, after)?;
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(JpegError::Unsupported(match m {
                    0xC3 | 0xC7 | 0xCB | 0xCF => "lossless JPEG".into(),
                    0xC9..=0xCB | 0xCD..=0xCF => "arithmetic-coded JPEG".into(),
                    _ => "hierarchical JPEG".into(),
                }))
            }
            0xC4 => {
                let p = segment(data, after)?;
                let mut i = 0;
                while i < p.len() {
                    let tc = p[i] >> 4;
                    let th = usize::from(p[i] & 15);
                    let counts: [u8; 16] = p
                        .get(i + 1..i + 17)
                        .ok_or(JpegError::Truncated("Huffman table"))?
                        .try_into()
                        .unwrap();
                    let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let values = p
                        .get(i + 17..i + 17 + n)
                        .ok_or(JpegError::Truncated("Huffman table"))?;
                    if th > 3 || tc > 1 {
                        return corrupt("bad Huffman table class or index");
                    }
                    let table = Some(Huffman::new(&counts, values)?);
                    if tc == 0 {
                        dc_tables[th] = table;
                    } else {
                        ac_tables[th] = table;
                    }
                    i += 17 + n;
                }
                pos = after + be16(data, after)?;
            }
            0xDB => {
                let p = segment(data, after)?;
                let mut i = 0;
                while i < p.len() {
                    let (pq, tq) = (p[i] >> 4, usize::from(p[i] & 15));
                    if tq > 3 || pq > 1 {
                        return corrupt("bad quantisation table");
                    }
                    let width = if pq == 0 { 1 } else { 2 };
                    let raw = p
                        .get(i + 1..i + 1 + 64 * width)
                        .ok_or(JpegError::Truncated("quantisation table"))?;
                    let mut table = [0u16; 64];
                    for (k, z) in NATURAL_ORDER[..64].iter().enumerate() {
                        table[*z] = if pq == 0 {
                            u16::from(raw[k])
                        } else {
                            u16::from_be_bytes([raw[2 * k], raw[2 * k + 1]])
                        };
                    }
                    qt[tq] = Some(table);
                    i += 1 + 64 * width;
                }
                pos = after + be16(data, after)?;
            }
            0xDD => {
                let p = segment(data, after)?;
                if p.len() != 2 {
                    return corrupt("bad restart interval segment");
                }
                restart_interval = usize::from(u16::from_be_bytes([p[0], p[1]]));
                pos = after + be16(data, after)?;
            }
            0xE0 => {
                let p = segment(data, after)?;
                jfif |= p.len() >= 14 && p.starts_with(b"JFIF\0");
                pos = after + be16(data, after)?;
            }
            0xEE => {
                let p = segment(data, after)?;
                if p.len() >= 12 && p.starts_with(b"Adobe") {
                    adobe = Some(p[11]);
                }
                pos = after + be16(data, after)?;
            }
            0xF8 => {
                return Err(JpegError::Unsupported(
                    "libjpeg 9 SmartScale/colour-transform JPEG".into(),
                ))
            }
            0xDC => return Err(JpegError::Unsupported("DNL marker".into())),
            0xDA => {
                let f = frame
                    .as_mut()
                    .ok_or_else(|| JpegError::Corrupt("scan before frame header".into()))?;
                scans += 1;
                if scans > 1000 {
                    return corrupt("more than 1000 scans");
                }
                let p = segment(data, after)?;
                let scan_start = after + be16(data, after)?;
                pos = decode_scan(
                    f,
                    p,
                    data,
                    scan_start,
                    &qt,
                    &dc_tables,
                    &ac_tables,
                    restart_interval,
                )?;
            }
            _ => pos = after + be16(data, after)?,
        }
    }
    let frame = frame.ok_or_else(|| JpegError::Corrupt("no frame header".into()))?;
    if scans == 0 {
        return corrupt("no scan");
    }
    let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
    let color = match ids.as_slice() {
        [_] => ColorSpace::Gray,
        [1, 2, 3] => ColorSpace::YCbCr,
        [1, 0x22, 0x23] | [b'r', b'g', b'b'] => {
            return Err(JpegError::Unsupported("big-gamut colour space".into()))
        }
        [b'R', b'G', b'B'] => ColorSpace::Rgb,
        _ if jfif => ColorSpace::YCbCr,
        _ => match adobe {
            Some(0) => ColorSpace::Rgb,
            _ => ColorSpace::YCbCr,
        },
    };
    let rgb = render(&frame, color)?;
    Ok((frame.width, frame.height, rgb))
}

/// Block geometry and libjpeg 9's choice of IDCT size per component.
fn setup_components(f: &mut Frame) {
    let (max_h, max_v) = (f.max_h, f.max_v);
    for c in &mut f.comps {
        c.width_blocks = (f.width * c.h).div_ceil(8 * max_h);
        c.height_blocks = (f.height * c.v).div_ceil(8 * max_v);
        c.stride_blocks = f.mcus_x * c.h;
        c.rows_blocks = f.mcus_y * c.v;
        c.coefs = vec![0i16; c.stride_blocks * c.rows_blocks * 64];
        // Scale chroma up in the IDCT (up to 2×) where the sampling ratio allows it.
        let scale = |max: usize, s: usize| if max % (s * 2) == 0 { 16 } else { 8 };
        c.dct_h = scale(max_h, c.h);
        c.dct_v = scale(max_v, c.v);
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_scan(
    f: &mut Frame,
    header: &[u8],
    data: &[u8],
    start: usize,
    qt: &[Option<[u16; 64]>; 4],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> Result<usize, JpegError> {
    let n = usize::from(*header.first().ok_or(JpegError::Truncated("scan header"))?);
    if n == 0 || n > 4 || header.len() != 4 + 2 * n {
        return corrupt("bad scan header length");
    }
    let mut members = Vec::with_capacity(n);
    for s in header[1..1 + 2 * n].chunks_exact(2) {
        let ci =
            f.comps.iter().position(|c| c.id == s[0]).ok_or_else(|| {
                JpegError::Corrupt(format!("scan names unknown component {}", s[0]))
            })?;
        if members.iter().any(|&(c, _, _)| c == ci) {
            return corrupt("component repeated in a scan");
        }
        members.push((ci, usize::from(s[1] >> 4), usize::from(s[1] & 15)));
    }
    let tail = &header[1 + 2 * n..];
    let (ss, se, ah, al) = (
        usize::from(tail[0]),
        usize::from(tail[1]),
        u32::from(tail[2] >> 4),
        u32::from(tail[2] & 15),
    );
    if f.progressive {
        let dc_scan = ss == 0;
        if (dc_scan && se != 0)
            || (!dc_scan && (se < ss || se > 63 || n != 1))
            || al > 13
            || ah > 13
        {
            return corrupt("bad progressive scan parameters");
        }
    } else if ss != 0 || se != 63 || ah != 0 || al != 0 {
        return Err(JpegError::Unsupported(
            "sequential scan with Ss/Se/Ah/Al other than 0/63/0/0".into(),
        ));
    }
    for &(ci, td, ta) in &members {
        let c = &mut f.comps[ci];
        if c.quant.is_none() {
            c.quant = Some(qt[c.tq].ok_or_else(|| {
                JpegError::Corrupt(format!("quantisation table {} missing", c.tq))
            })?);
        }
        c.dc_pred = 0;
        let needs_dc = ss == 0 && ah == 0;
        let needs_ac = se > 0 && (!f.progressive || ss > 0);
        if (needs_dc && td > 3) || (needs_ac && ta > 3) {
            return corrupt("bad Huffman table index");
        }
        if needs_dc && dc_tables[td].is_none() {
            return corrupt(format!("DC Huffman table {td} missing"));
        }
        if needs_ac && ac_tables[ta].is_none() {
            return corrupt(format!("AC Huffman table {ta} missing"));
        }
    }

    let mut reader = BitReader::new(data, start);
    let mut eobrun = 0u32;
    // Interleaved scans walk whole MCUs; a single-component scan walks that component's blocks.
    let (mcus_x, mcus_y) = if n == 1 {
        let c = &f.comps[members[0].0];
        (c.width_blocks, c.height_blocks)
    } else {
        (f.mcus_x, f.mcus_y)
    };
    let total = mcus_x * mcus_y;
    let mut next_rst = 0u8;
    let dummy = Huffman::new(&[0; 16], &[]).expect("empty table is valid");
    for mcu in 0..total {
        if restart_interval > 0 && mcu > 0 && mcu % restart_interval == 0 {
            reader.restart(next_rst)?;
            next_rst = (next_rst + 1) % 8;
            eobrun = 0;
            for &(ci, _, _) in &members {
                f.comps[ci].dc_pred = 0;
            }
        }
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        for &(ci, td, ta) in &members {
            let c = &mut f.comps[ci];
            let (bw, bh) = if n == 1 { (1, 1) } else { (c.h, c.v) };
            for by in 0..bh {
                for bx in 0..bw {
                    let (col, row) = (mx * bw + bx, my * bh + by);
                    let at = (row * c.stride_blocks + col) * 64;
                    let block: &mut [i16; 64] = (&mut c.coefs[at..at + 64]).try_into().unwrap();
                    let dc = dc_tables.get(td).and_then(Option::as_ref).unwrap_or(&dummy);
                    let ac = ac_tables.get(ta).and_then(Option::as_ref).unwrap_or(&dummy);
                    if !f.progressive {
                        decode_sequential(&mut reader, block, &mut c.dc_pred, dc, ac)?;
                    } else if ss == 0 {
                        if ah == 0 {
                            let s = u32::from(reader.decode(dc)?);
                            if s > 15 {
                                return corrupt("bad DC magnitude");
                            }
                            let diff = extend(reader.bits(s), s);
                            c.dc_pred = c.dc_pred.wrapping_add(diff);
                            block[0] = (c.dc_pred << al) as i16;
                        } else if reader.bit() {
                            block[0] |= (1i32 << al) as i16;
                        }
                    } else if ah == 0 {
                        ac_first(&mut reader, block, ac, ss, se, al, &mut eobrun)?;
                    } else {
                        ac_refine(&mut reader, block, ac, ss, se, al, &mut eobrun)?;
                    }
                }
            }
        }
    }
    // Continue marker parsing where the entropy-coded data stopped.
    Ok(reader.pos)
}

fn decode_sequential(
    r: &mut BitReader<'_>,
    block: &mut [i16; 64],
    pred: &mut i32,
    dc: &Huffman,
    ac: &Huffman,
) -> Result<(), JpegError> {
    let s = u32::from(r.decode(dc)?);
    if s > 15 {
        return corrupt("bad DC magnitude");
    }
    *pred = pred.wrapping_add(extend(r.bits(s), s));
    block[0] = *pred as i16;
    let mut k = 1;
    while k < 64 {
        let rs = r.decode(ac)?;
        let (run, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += run;
            block[NATURAL_ORDER[k]] = extend(r.bits(s), s) as i16;
        } else if run != 15 {
            break;
        } else {
            k += 15;
        }
        k += 1;
    }
    Ok(())
}

fn ac_first(
    r: &mut BitReader<'_>,
    block: &mut [i16; 64],
    ac: &Huffman,
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), JpegError> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = ss;
    while k <= se {
        let rs = r.decode(ac)?;
        let (run, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += run as usize;
            let v = extend(r.bits(s), s);
            block[NATURAL_ORDER[k.min(79)]] = (v << al) as i16;
        } else if run != 15 {
            *eobrun = (1 << run) + r.bits(run) as u32 - 1;
            break;
        } else {
            k += 15;
        }
        k += 1;
    }
    Ok(())
}

fn ac_refine(
    r: &mut BitReader<'_>,
    block: &mut [i16; 64],
    ac: &Huffman,
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) -> Result<(), JpegError> {
    let p1 = 1i32 << al;
    let m1 = -1i32 << al;
    let refine = |r: &mut BitReader<'_>, coef: &mut i16| {
        if r.bit() && (i32::from(*coef) & p1) == 0 {
            *coef = (i32::from(*coef) + if *coef >= 0 { p1 } else { m1 }) as i16;
        }
    };
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = r.decode(ac)?;
            let (mut run, s) = (i32::from(rs >> 4), rs & 15);
            let mut value = 0i32;
            if s != 0 {
                // Only magnitude 1 is valid here; libjpeg warns and carries on.
                value = if r.bit() { p1 } else { m1 };
            } else if run != 15 {
                *eobrun = (1 << run) + r.bits(run as u32) as u32;
                break;
            }
            // Skip over `run` zero coefficients, refining the nonzero ones passed.
            while k <= se {
                let coef = &mut block[NATURAL_ORDER[k]];
                if *coef != 0 {
                    refine(r, coef);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                block[NATURAL_ORDER[k.min(79)]] = value as i16;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let coef = &mut block[NATURAL_ORDER[k]];
            if *coef != 0 {
                refine(r, coef);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

// --- Inverse DCT (libjpeg 9 jidctint.c: ISLOW and its 16-point scaled variants) ---

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
/// libjpeg's `RANGE_CENTER` for 8-bit samples (`CENTERJSAMPLE << 2`).
const RANGE_CENTER: i64 = 512;
const RANGE_MASK: i32 = 1023;

/// `FIX(x)`: a constant in 13-bit fixed point, rounded as libjpeg's macro does.
const fn fix(x: f64) -> i64 {
    (x * (1u32 << CONST_BITS) as f64 + 0.5) as i64
}

/// 8-point inverse DCT of `x` (DC term plus `bias` after scaling), before descaling.
fn idct8(x: [i64; 8], bias: i64) -> [i64; 8] {
    let z2 = (x[0] << CONST_BITS) + bias;
    let z3 = x[4] << CONST_BITS;
    let tmp0 = z2 + z3;
    let tmp1 = z2 - z3;
    let (z2, z3) = (x[2], x[6]);
    let z1 = (z2 + z3) * fix(0.541196100);
    let tmp2 = z1 + z2 * fix(0.765366865);
    let tmp3 = z1 - z3 * fix(1.847759065);
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp2, tmp0 - tmp2, tmp1 + tmp3, tmp1 - tmp3);

    let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
    let z2 = t0 + t2;
    let z3 = t1 + t3;
    let z1 = (z2 + z3) * fix(1.175875602);
    let z2 = z2 * -fix(1.961570560) + z1;
    let z3 = z3 * -fix(0.390180644) + z1;
    let z1 = (t0 + t3) * -fix(0.899976223);
    let tmp0 = t0 * fix(0.298631336) + z1 + z2;
    let tmp3 = t3 * fix(1.501321110) + z1 + z3;
    let z1 = (t1 + t2) * -fix(2.562915447);
    let tmp1 = t1 * fix(2.053119869) + z1 + z3;
    let tmp2 = t2 * fix(3.072711026) + z1 + z2;
    [
        tmp10 + tmp3,
        tmp11 + tmp2,
        tmp12 + tmp1,
        tmp13 + tmp0,
        tmp13 - tmp0,
        tmp12 - tmp1,
        tmp11 - tmp2,
        tmp10 - tmp3,
    ]
}

/// 16-point inverse DCT of 8 coefficients (libjpeg's scaled IDCT), before descaling.
fn idct16(x: [i64; 8], bias: i64) -> [i64; 16] {
    let tmp0 = (x[0] << CONST_BITS) + bias;
    let z1 = x[4];
    let tmp1 = z1 * fix(1.306562965);
    let tmp2 = z1 * fix(0.541196100);
    let (tmp10, tmp11, tmp12, tmp13) = (tmp0 + tmp1, tmp0 - tmp1, tmp0 + tmp2, tmp0 - tmp2);
    let (z1, z2) = (x[2], x[6]);
    let z3 = z1 - z2;
    let z4 = z3 * fix(0.275899379);
    let z3 = z3 * fix(1.387039845);
    let tmp0 = z3 + z2 * fix(2.562915447);
    let tmp1 = z4 + z1 * fix(0.899976223);
    let tmp2 = z3 - z1 * fix(0.601344887);
    let tmp3 = z4 - z2 * fix(0.509795579);
    let (tmp20, tmp27) = (tmp10 + tmp0, tmp10 - tmp0);
    let (tmp21, tmp26) = (tmp12 + tmp1, tmp12 - tmp1);
    let (tmp22, tmp25) = (tmp13 + tmp2, tmp13 - tmp2);
    let (tmp23, tmp24) = (tmp11 + tmp3, tmp11 - tmp3);

    let (z1, mut z2, z3, z4) = (x[1], x[3], x[5], x[7]);
    let t11 = z1 + z3;
    let mut tmp1 = (z1 + z2) * fix(1.353318001);
    let mut tmp2 = t11 * fix(1.247225013);
    let mut tmp3 = (z1 + z4) * fix(1.093201867);
    let mut tmp10 = (z1 - z4) * fix(0.897167586);
    let mut tmp11 = t11 * fix(0.666655658);
    let mut tmp12 = (z1 - z2) * fix(0.410524528);
    let tmp0 = tmp1 + tmp2 + tmp3 - z1 * fix(2.286341144);
    let tmp13 = tmp10 + tmp11 + tmp12 - z1 * fix(1.835730603);
    let w = (z2 + z3) * fix(0.138617169);
    tmp1 += w + z2 * fix(0.071888074);
    tmp2 += w - z3 * fix(1.125726048);
    let w = (z3 - z2) * fix(1.407403738);
    tmp11 += w - z3 * fix(0.766367282);
    tmp12 += w + z2 * fix(1.971951411);
    z2 += z4;
    let w = z2 * -fix(0.666655658);
    tmp1 += w;
    tmp3 += w + z4 * fix(1.065388962);
    let w = z2 * -fix(1.247225013);
    tmp10 += w + z4 * fix(3.141271809);
    tmp12 += w;
    let w = (z3 + z4) * -fix(1.353318001);
    tmp2 += w;
    tmp3 += w;
    let w = (z4 - z3) * fix(0.410524528);
    tmp10 += w;
    tmp11 += w;
    [
        tmp20 + tmp0,
        tmp21 + tmp1,
        tmp22 + tmp2,
        tmp23 + tmp3,
        tmp24 + tmp10,
        tmp25 + tmp11,
        tmp26 + tmp12,
        tmp27 + tmp13,
        tmp27 - tmp13,
        tmp26 - tmp12,
        tmp25 - tmp11,
        tmp24 - tmp10,
        tmp23 - tmp3,
        tmp22 - tmp2,
        tmp21 - tmp1,
        tmp20 - tmp0,
    ]
}

fn idct_1d(x: [i64; 8], bias: i64, points: usize, out: &mut [i64; 16]) {
    if points == 16 {
        *out = idct16(x, bias);
    } else {
        out[..8].copy_from_slice(&idct8(x, bias));
    }
}

/// Dequantise and inverse-transform one block into `dct_w × dct_h` samples at `out`
/// (row stride `stride`), with libjpeg's descaling and masked range limit.
fn idct_block(
    coefs: &[i16],
    quant: &[u16; 64],
    dct_w: usize,
    dct_h: usize,
    out: &mut [u8],
    stride: usize,
) {
    // Pass 1: columns, 8 coefficients → dct_h values, kept with PASS1_BITS extra bits.
    let mut ws = [[0i32; 8]; 16];
    let mut col = [0i64; 16];
    for c in 0..8 {
        let x: [i64; 8] = std::array::from_fn(|k| {
            i64::from(i32::from(coefs[k * 8 + c]) * i32::from(quant[k * 8 + c]))
        });
        idct_1d(x, 1 << (CONST_BITS - PASS1_BITS - 1), dct_h, &mut col);
        for (r, v) in col[..dct_h].iter().enumerate() {
            ws[r][c] = (v >> (CONST_BITS - PASS1_BITS)) as i32;
        }
    }
    // Pass 2: rows, 8 values → dct_w samples; the range centre and rounding ride on the DC term.
    let mut row = [0i64; 16];
    for (r, w) in ws[..dct_h].iter().enumerate() {
        let mut x: [i64; 8] = std::array::from_fn(|k| i64::from(w[k]));
        x[0] += (RANGE_CENTER << (PASS1_BITS + 3)) + (1 << (PASS1_BITS + 2));
        idct_1d(x, 0, dct_w, &mut row);
        let dst = &mut out[r * stride..r * stride + dct_w];
        for (d, v) in dst.iter_mut().zip(&row[..dct_w]) {
            let idx = ((v >> (CONST_BITS + PASS1_BITS + 3)) as i32) & RANGE_MASK;
            // `IDCT_range_limit`: index 384 is sample 0, 639 is 255.
            *d = (idx - (RANGE_CENTER as i32 - 128)).clamp(0, 255) as u8;
        }
    }
}

/// IDCT every component to its sample plane, upsample by box replication, convert to RGB.
fn render(f: &Frame, color: ColorSpace) -> Result<Vec<u8>, JpegError> {
    struct Plane {
        data: Vec<u8>,
        stride: usize,
        expand_h: usize,
        expand_v: usize,
    }
    let mut planes = Vec::with_capacity(f.comps.len());
    for c in &f.comps {
        let quant = c
            .quant
            .ok_or_else(|| JpegError::Corrupt(format!("component {} has no scan", c.id)))?;
        let h_in = c.h * c.dct_h / 8;
        let v_in = c.v * c.dct_v / 8;
        if f.max_h % h_in != 0 || f.max_v % v_in != 0 {
            return Err(JpegError::Unsupported("fractional sampling ratio".into()));
        }
        let stride = c.width_blocks * c.dct_h;
        let mut data = vec![0u8; stride * c.height_blocks * c.dct_v];
        for by in 0..c.height_blocks {
            for bx in 0..c.width_blocks {
                let at = (by * c.stride_blocks + bx) * 64;
                let out_at = by * c.dct_v * stride + bx * c.dct_h;
                idct_block(
                    &c.coefs[at..at + 64],
                    &quant,
                    c.dct_h,
                    c.dct_v,
                    &mut data[out_at..],
                    stride,
                );
            }
        }
        planes.push(Plane {
            data,
            stride,
            expand_h: f.max_h / h_in,
            expand_v: f.max_v / v_in,
        });
    }
    let (w, h) = (f.width, f.height);
    let mut rgb = vec![0u8; w * h * 3];
    let sample =
        |p: &Plane, x: usize, y: usize| p.data[(y / p.expand_v) * p.stride + x / p.expand_h];
    match color {
        ColorSpace::Gray => {
            for y in 0..h {
                for x in 0..w {
                    rgb[(y * w + x) * 3..][..3].fill(sample(&planes[0], x, y));
                }
            }
        }
        ColorSpace::Rgb => {
            for y in 0..h {
                for x in 0..w {
                    for (c, p) in planes.iter().enumerate() {
                        rgb[(y * w + x) * 3 + c] = sample(p, x, y);
                    }
                }
            }
        }
        ColorSpace::YCbCr => {
            let t = YccTables::new();
            for y in 0..h {
                for x in 0..w {
                    let (yy, cb, cr) = (
                        i32::from(sample(&planes[0], x, y)),
                        usize::from(sample(&planes[1], x, y)),
                        usize::from(sample(&planes[2], x, y)),
                    );
                    let g = ((t.cb_g[cb] + t.cr_g[cr]) >> 16) as i32;
                    let px = &mut rgb[(y * w + x) * 3..][..3];
                    px[0] = (yy + t.cr_r[cr]).clamp(0, 255) as u8;
                    px[1] = (yy + g).clamp(0, 255) as u8;
                    px[2] = (yy + t.cb_b[cb]).clamp(0, 255) as u8;
                }
            }
        }
    }
    Ok(rgb)
}

/// libjpeg's YCbCr → RGB tables (16-bit fixed point).
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    fn new() -> Self {
        const SCALE: f64 = 65536.0;
        let fix = |x: f64| (x * SCALE + 0.5) as i64;
        let descale = |v: i64| ((v + (1 << 15)) >> 16) as i32;
        let x = |i: usize| i as i64 - 128;
        YccTables {
            cr_r: std::array::from_fn(|i| descale(fix(1.402) * x(i))),
            cb_b: std::array::from_fn(|i| descale(fix(1.772) * x(i))),
            cr_g: std::array::from_fn(|i| -fix(0.714136286) * x(i)),
            cb_g: std::array::from_fn(|i| -fix(0.344136286) * x(i) + (1 << 15)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_constants_are_libjpegs() {
        // jidctint.c lists these precomputed values for CONST_BITS = 13.
        assert_eq!(fix(0.298631336), 2446);
        assert_eq!(fix(0.541196100), 4433);
        assert_eq!(fix(1.847759065), 15137);
        assert_eq!(fix(3.072711026), 25172);
        let t = YccTables::new();
        assert_eq!((t.cr_r[255], t.cb_b[0]), (178, -227));
    }

    #[test]
    fn dc_only_blocks_are_flat_and_range_limited() {
        let mut coefs = [0i16; 64];
        let quant = [1u16; 64];
        let mut out = [0u8; 16 * 16];
        // DC 80 → 80 / 8 = +10 around the centre: 138 everywhere, in both IDCT sizes.
        coefs[0] = 80;
        for (w, h) in [(8, 8), (16, 16), (16, 8), (8, 16)] {
            out.fill(0);
            idct_block(&coefs, &quant, w, h, &mut out, 16);
            for r in 0..h {
                assert!(out[r * 16..r * 16 + w].iter().all(|&v| v == 138), "{w}x{h}");
            }
        }
        // Far above white clamps to 255; far below black to 0.
        coefs[0] = 2000;
        idct_block(&coefs, &quant, 8, 8, &mut out, 16);
        assert_eq!(out[0], 255);
        coefs[0] = -2000;
        idct_block(&coefs, &quant, 8, 8, &mut out, 16);
        assert_eq!(out[0], 0);
    }

    #[test]
    fn huffman_tables_decode_canonical_codes() {
        // Lengths: one 2-bit code (00 → 5), two 3-bit codes (010 → 6, 011 → 7).
        let mut counts = [0u8; 16];
        counts[1] = 1;
        counts[2] = 2;
        let t = Huffman::new(&counts, &[5, 6, 7]).unwrap();
        let data = [0b0001_0011, 0b0000_0000];
        let mut r = BitReader::new(&data, 0);
        assert_eq!(r.decode(&t).unwrap(), 5);
        assert_eq!(r.decode(&t).unwrap(), 6);
        assert_eq!(r.decode(&t).unwrap(), 7);
        // Too many codes for their length is a bogus table.
        let mut bad = [0u8; 16];
        bad[0] = 3;
        assert!(Huffman::new(&bad, &[1, 2, 3]).is_err());
    }

    const BASELINE: &[u8] = include_bytes!("../../tests/fixtures/tiny.jpg");
    /// 40x24, 4:2:0, progressive, a restart marker every MCU row.
    const PROGRESSIVE: &[u8] = include_bytes!("../../tests/fixtures/tiny_progressive.jpg");

    #[test]
    fn fixtures_decode() {
        let (w, h, rgb) = decode_rgb(BASELINE, 1 << 20).unwrap();
        assert_eq!((w, h, rgb.len()), (16, 16, 16 * 16 * 3));
        let (w, h, rgb) = decode_rgb(PROGRESSIVE, 1 << 20).unwrap();
        assert_eq!((w, h, rgb.len()), (40, 24, 40 * 24 * 3));
        // The source ramps red with x: the right edge is much redder than the left.
        assert!(rgb[39 * 3] > rgb[0] + 150, "{} vs {}", rgb[39 * 3], rgb[0]);
        assert_eq!(read_dimensions(PROGRESSIVE).unwrap(), (40, 24));
        assert!(matches!(
            decode_rgb(PROGRESSIVE, 500),
            Err(JpegError::Unsupported(_))
        ));
    }

    #[test]
    fn truncated_and_mutated_files_are_errors_never_panics() {
        for data in [BASELINE, PROGRESSIVE] {
            for cut in 0..data.len() {
                assert!(decode_rgb(&data[..cut], 1 << 20).is_err(), "cut at {cut}");
            }
            // Deterministic byte mutations (xorshift): any outcome but a panic is acceptable.
            let mut state = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            for _ in 0..1500 {
                let mut m = data.to_vec();
                for _ in 0..1 + next() % 3 {
                    let at = (next() % m.len() as u64) as usize;
                    m[at] = next() as u8;
                }
                let _ = decode_rgb(&m, 1 << 20);
                let _ = read_dimensions(&m);
            }
        }
    }

    #[test]
    fn extend_recovers_signed_values() {
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0b010, 3), -5);
        assert_eq!(extend(0b110, 3), 6);
    }
}
