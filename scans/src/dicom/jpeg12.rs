//! Sequential-DCT JPEG with Huffman coding (ISO/IEC 10918-1 processes 1, 2 and 4: SOF0 and
//! SOF1) of one component at 8 or 12 bits per sample: what DICOM's JPEG Baseline and JPEG
//! Extended transfer syntaxes (1.2.840.10008.1.2.4.50 and .51) hold in a CT slice.
//!
//! Written by hand because no Rust crate decodes 12-bit lossy JPEG: jpeg-decoder (what
//! dicom-pixeldata uses) refuses it with `SamplePrecision(12)`, and so does zune-jpeg. The
//! inverse DCT is the IJG library's `jpeg_idct_islow` (libjpeg, libjpeg-turbo; what DCMTK
//! and GDCM decode with), transcribed in integer arithmetic with its constants, rounding and
//! range limiting, so a slice decodes to the very samples those tools give (a test checks
//! this against DCMTK's `dcmdjpeg`). Anything this decoder does not read (progressive,
//! arithmetic coding, hierarchical, several components, a DNL-defined height) is refused by
//! name, and so is every malformed or truncated stream: an error, never a guess.

/// A decoded image: `width × height` samples, row by row, each in `0..2^precision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub precision: u8,
    pub samples: Vec<u16>,
}

/// Natural (row-major) index of the k-th coefficient in zig-zag order.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// The most samples an image may have (a CT slice has 512² or 1024²).
const MAX_SAMPLES: usize = 1 << 26;

/// A canonical Huffman table (ISO/IEC 10918-1 Annex C and F.2.2.3).
#[derive(Clone)]
struct Huffman {
    /// Largest code of each length (1..=16), −1 when there is none.
    maxcode: [i32; 17],
    /// Index in `values` of the first code of each length, minus that code.
    valoffset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Huffman, String> {
        let mut maxcode = [-1i32; 17];
        let mut valoffset = [0i32; 17];
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16 {
            let n = usize::from(counts[len - 1]);
            if n > 0 {
                valoffset[len] = k as i32 - code;
                code += n as i32;
                k += n;
                maxcode[len] = code - 1;
                // An all-ones code is reserved (ISO/IEC 10918-1 C.2), as IJG enforces.
                if code >= (1 << len) {
                    return Err(format!("a Huffman table with more codes of length {len} than fit"));
                }
            }
            code <<= 1;
        }
        if k != values.len() {
            return Err("a Huffman table whose counts do not match its values".into());
        }
        Ok(Huffman {
            maxcode,
            valoffset,
            values,
        })
    }
}

/// The entropy-coded bits of a scan: `FF 00` is a data byte `FF`; any other marker ends
/// the data and is left for the caller.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> Bits<'a> {
    fn fill(&mut self) -> Result<(), String> {
        while self.n <= 56 {
            let Some(&b) = self.data.get(self.pos) else {
                // The data end (no EOI): what is buffered may still be enough.
                if self.n == 0 {
                    return Err("the JPEG data end inside a block (truncated)".into());
                }
                return Ok(());
            };
            if b == 0xFF {
                match self.data.get(self.pos + 1) {
                    Some(0x00) => self.pos += 2,
                    // A marker: no more data bits in this segment.
                    _ => {
                        if self.n == 0 {
                            return Err("a marker inside a block: the JPEG data are damaged or truncated".into());
                        }
                        return Ok(());
                    }
                }
            } else {
                self.pos += 1;
            }
            self.acc |= u64::from(b) << (56 - self.n);
            self.n += 8;
        }
        Ok(())
    }

    fn bits(&mut self, count: u32) -> Result<u32, String> {
        if count == 0 {
            return Ok(0);
        }
        if self.n < count {
            self.fill()?;
            if self.n < count {
                return Err("a marker inside a block: the JPEG data are damaged or truncated".into());
            }
        }
        let v = (self.acc >> (64 - count)) as u32;
        self.acc <<= count;
        self.n -= count;
        Ok(v)
    }

    fn decode(&mut self, h: &Huffman) -> Result<u8, String> {
        let mut code = self.bits(1)? as i32;
        for len in 1..=16 {
            if code <= h.maxcode[len] {
                let i = (h.valoffset[len] + code) as usize;
                return h.values.get(i).copied().ok_or_else(|| "a bad Huffman code".to_string());
            }
            if len < 16 {
                code = (code << 1) | self.bits(1)? as i32;
            }
        }
        Err("a Huffman code that no table defines (damaged data)".into())
    }

    /// `s` more bits as a signed value (F.2.2.1, EXTEND).
    fn receive_extend(&mut self, s: u8) -> Result<i32, String> {
        if s == 0 {
            return Ok(0);
        }
        if s > 16 {
            return Err(format!("a coefficient of {s} bits (damaged data)"));
        }
        let v = self.bits(u32::from(s))? as i32;
        Ok(if v < (1 << (s - 1)) { v - (1 << s) + 1 } else { v })
    }

    /// Drops the bits left in the current byte and steps over the restart marker `RST(n)`.
    fn restart(&mut self, n: u8) -> Result<(), String> {
        self.acc = 0;
        self.n = 0;
        while self.data.get(self.pos) == Some(&0xFF) && self.data.get(self.pos + 1) == Some(&0xFF) {
            self.pos += 1;
        }
        match (self.data.get(self.pos), self.data.get(self.pos + 1)) {
            (Some(0xFF), Some(&m)) if m == 0xD0 + n => {
                self.pos += 2;
                Ok(())
            }
            _ => Err(format!("restart marker RST{n} missing (damaged data)")),
        }
    }
}

/// The frame header's facts that decoding needs.
struct Frame {
    precision: u8,
    width: usize,
    height: usize,
    component: u8,
    table: usize,
}

fn u16_at(d: &[u8], i: usize) -> Result<usize, String> {
    match (d.get(i), d.get(i + 1)) {
        (Some(&a), Some(&b)) => Ok(usize::from(a) << 8 | usize::from(b)),
        _ => Err("the JPEG data end inside a marker segment (truncated)".into()),
    }
}

/// Decodes a JPEG stream (see the module documentation).
/// `expected`: the image's width and height when the caller knows them (DICOM's Columns and
/// Rows): another frame size is refused before anything is allocated.
pub fn decode(data: &[u8], expected: Option<(usize, usize)>) -> Result<Image, String> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err("not a JPEG stream (no SOI marker)".into());
    }
    let mut pos = 2;
    let mut quant: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac: [Option<Huffman>; 4] = [None, None, None, None];
    let mut frame: Option<Frame> = None;
    let mut restart = 0usize;
    loop {
        // The next marker, after any fill bytes.
        if data.get(pos) != Some(&0xFF) {
            return Err(format!("a marker expected at byte {pos} (damaged data)"));
        }
        while data.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&m) = data.get(pos + 1) else {
            return Err("the JPEG data end before EOI (truncated)".into());
        };
        pos += 2;
        match m {
            0xD9 => return Err("EOI before any scan: no image".into()),
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let len = u16_at(data, pos)?;
        let seg = data
            .get(pos + 2..pos + len)
            .filter(|_| len >= 2)
            .ok_or("the JPEG data end inside a marker segment (truncated)")?;
        pos += len;
        match m {
            0xC0 | 0xC1 => frame = Some(frame_header(seg, expected)?),
            0xDE | 0xDF => return Err("hierarchical JPEG (DHP/EXP) is not read by this decoder".into()),
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                let what = match m {
                    0xC2 => "progressive DCT",
                    0xC3 => "lossless",
                    0xC9..=0xCB | 0xCD..=0xCF => "arithmetic-coded",
                    _ => "hierarchical",
                };
                return Err(format!("{what} JPEG (SOF{}) is not read by this decoder", m - 0xC0));
            }
            0xC4 => huffman_tables(seg, &mut dc, &mut ac)?,
            0xDB => quant_tables(seg, &mut quant)?,
            0xDD => restart = u16_at(seg, 0)?,
            0xDA => {
                let f = frame.as_ref().ok_or("a scan before the frame header")?;
                if seg.first() != Some(&1) || seg.len() < 6 {
                    return Err("a scan of several components".into());
                }
                if seg[1] != f.component {
                    return Err("a scan of a component the frame does not declare".into());
                }
                let (td, ta) = (usize::from(seg[2] >> 4), usize::from(seg[2] & 15));
                // Spectral selection and successive approximation (seg[3..6]) must be
                // 0..63 and 0 in a sequential scan; some encoders write other values, which
                // the IJG library ignores (with a warning) for a sequential frame, and so
                // does this decoder: the frame header, not the scan, says the process.
                let q = quant
                    .get(f.table)
                    .copied()
                    .flatten()
                    .ok_or("a quantisation table the frame names is missing")?;
                let dct = dc
                    .get(td)
                    .cloned()
                    .flatten()
                    .ok_or("a DC Huffman table the scan names is missing")?;
                let act = ac
                    .get(ta)
                    .cloned()
                    .flatten()
                    .ok_or("an AC Huffman table the scan names is missing")?;
                return scan(&data[pos..], f, &q, &dct, &act, restart);
            }
            // APPn, COM, and anything else with a length: skipped.
            _ => {}
        }
    }
}

/// A baseline or extended sequential frame header (SOF0/SOF1): one component of 8 or 12
/// bits, of the size the DICOM header gives (`expected`).
fn frame_header(seg: &[u8], expected: Option<(usize, usize)>) -> Result<Frame, String> {
    if seg.len() < 6 {
        return Err("a short frame header".into());
    }
    let precision = seg[0];
    let height = u16_at(seg, 1)?;
    let width = u16_at(seg, 3)?;
    let comps = seg[5];
    if precision != 8 && precision != 12 {
        return Err(format!("{precision}-bit samples: sequential DCT JPEG has 8 or 12"));
    }
    if comps != 1 {
        return Err(format!("{comps} colour components: a CT slice has one"));
    }
    if height == 0 {
        return Err("a height given by a DNL marker is not read".into());
    }
    if width == 0 || width * height > MAX_SAMPLES {
        return Err(format!("{width} × {height} samples: not an image this reader takes"));
    }
    if let Some((w, h)) = expected.filter(|&e| e != (width, height)) {
        return Err(format!(
            "the JPEG image is {width}×{height} where Columns × Rows say {w}×{h}"
        ));
    }
    if seg.len() < 9 || seg[8] > 3 {
        return Err("a bad frame component".into());
    }
    Ok(Frame {
        precision,
        width,
        height,
        component: seg[6],
        table: usize::from(seg[8]),
    })
}

/// The Huffman tables of a DHT segment, each into its class's slot.
fn huffman_tables(seg: &[u8], dc: &mut [Option<Huffman>; 4], ac: &mut [Option<Huffman>; 4]) -> Result<(), String> {
    let mut i = 0;
    while i < seg.len() {
        let (class, id) = (seg[i] >> 4, usize::from(seg[i] & 15));
        let counts: [u8; 16] = seg
            .get(i + 1..i + 17)
            .and_then(|c| c.try_into().ok())
            .ok_or("a short Huffman table")?;
        let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let values = seg.get(i + 17..i + 17 + n).ok_or("a short Huffman table")?.to_vec();
        if class > 1 || id > 3 {
            return Err(format!("Huffman table class {class} id {id}"));
        }
        let t = Huffman::new(&counts, values)?;
        if class == 0 {
            dc[id] = Some(t);
        } else {
            ac[id] = Some(t);
        }
        i += 17 + n;
    }
    Ok(())
}

/// The quantisation tables of a DQT segment (8- or 16-bit entries).
fn quant_tables(seg: &[u8], quant: &mut [Option<[u16; 64]>; 4]) -> Result<(), String> {
    let mut i = 0;
    while i < seg.len() {
        let (wide, id) = (seg[i] >> 4, usize::from(seg[i] & 15));
        if wide > 1 || id > 3 {
            return Err(format!("quantisation table precision {wide} id {id}"));
        }
        let mut q = [0u16; 64];
        for (k, v) in q.iter_mut().enumerate() {
            *v = if wide == 1 {
                u16_at(seg, i + 1 + 2 * k)? as u16
            } else {
                u16::from(*seg.get(i + 1 + k).ok_or("a short quantisation table")?)
            };
        }
        quant[id] = Some(q);
        i += 1 + 64 * (usize::from(wide) + 1);
    }
    Ok(())
}

/// Decodes the scan's entropy-coded data into the image.
fn scan(data: &[u8], f: &Frame, q: &[u16; 64], dc: &Huffman, ac: &Huffman, restart: usize) -> Result<Image, String> {
    let (bw, bh) = (f.width.div_ceil(8), f.height.div_ceil(8));
    let mut out = vec![0u16; f.width * f.height];
    let mut bits = Bits {
        data,
        pos: 0,
        acc: 0,
        n: 0,
    };
    let mut pred = 0i32;
    let mut next_rst = 0u8;
    for b in 0..bw * bh {
        if restart > 0 && b > 0 && b % restart == 0 {
            bits.restart(next_rst)?;
            next_rst = (next_rst + 1) % 8;
            pred = 0;
        }
        let mut coef = [0i16; 64];
        let t = bits.decode(dc)?;
        if t > 15 {
            return Err(format!("a DC difference of {t} bits (damaged data)"));
        }
        pred = pred.wrapping_add(bits.receive_extend(t)?);
        // JCOEF is 16 bits in the IJG library.
        coef[0] = pred as i16;
        let mut k = 1;
        while k < 64 {
            let rs = bits.decode(ac)?;
            let (r, s) = (usize::from(rs >> 4), rs & 15);
            if s == 0 {
                if r != 15 {
                    break;
                }
                k += 16;
                continue;
            }
            k += r;
            if k > 63 {
                return Err("a coefficient past the end of a block (damaged data)".into());
            }
            coef[ZIGZAG[k]] = bits.receive_extend(s)? as i16;
            k += 1;
        }
        let mut block = [0u16; 64];
        idct_islow(&coef, q, f.precision, &mut block);
        let (bx, by) = (b % bw, b / bw);
        for y in 0..8 {
            let row = by * 8 + y;
            if row >= f.height {
                break;
            }
            for x in 0..8 {
                let col = bx * 8 + x;
                if col < f.width {
                    out[row * f.width + col] = block[y * 8 + x];
                }
            }
        }
    }
    Ok(Image {
        width: f.width,
        height: f.height,
        precision: f.precision,
        samples: out,
    })
}

const CONST_BITS: u32 = 13;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// The even and odd halves of one 1-D pass of `jpeg_idct_islow` over `v[0..8]`; returns
/// the eight outputs before descaling.
fn islow_1d(v: [i64; 8]) -> [i64; 8] {
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (v[0] + v[4]) << CONST_BITS;
    let tmp1 = (v[0] - v[4]) << CONST_BITS;
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    let (t0, t1, t2, t3) = (v[7], v[5], v[3], v[1]);
    let (z1, z2, z3, z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
    let z5 = (z3 + z4) * FIX_1_175875602;
    let (t0, t1, t2, t3) = (
        t0 * FIX_0_298631336,
        t1 * FIX_2_053119869,
        t2 * FIX_3_072711026,
        t3 * FIX_1_501321110,
    );
    let (z1, z2) = (z1 * -FIX_0_899976223, z2 * -FIX_2_562915447);
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    let (t0, t1, t2, t3) = (t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4);
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// `jpeg_idct_islow` of the IJG library for `precision`-bit samples: dequantise, columns,
/// rows, then the library's range limit (the output wraps modulo 4 × 2^precision before it
/// is clamped, as its `range_limit[x & RANGE_MASK]` table does).
fn idct_islow(coef: &[i16; 64], q: &[u16; 64], precision: u8, out: &mut [u16; 64]) {
    // Quantisation tables are stored in zig-zag order.
    let mut qn = [0i64; 64];
    for k in 0..64 {
        qn[ZIGZAG[k]] = i64::from(q[k]);
    }
    let pass1: u32 = if precision == 8 { 2 } else { 1 };
    let mut ws = [0i32; 64];
    for c in 0..8 {
        let v = std::array::from_fn(|r| i64::from(coef[r * 8 + c]) * qn[r * 8 + c]);
        let o = islow_1d(v);
        for r in 0..8 {
            ws[r * 8 + c] = descale(o[r], CONST_BITS - pass1) as i32;
        }
    }
    let max = (1i64 << precision) - 1;
    let center = 1i64 << (precision - 1);
    let range = 4i64 << precision;
    for r in 0..8 {
        let v = std::array::from_fn(|c| i64::from(ws[r * 8 + c]));
        let o = islow_1d(v);
        for c in 0..8 {
            let x = descale(o[c], CONST_BITS + pass1 + 3);
            // Wrapped into [−range/2, range/2), as the table's mask does.
            let w = (x + range / 2).rem_euclid(range) - range / 2;
            out[r * 8 + c] = (w + center).clamp(0, max) as u16;
        }
    }
}

/// The sample precision a JPEG stream's frame header declares, if it has one this decoder
/// reads (SOF0 or SOF1), without decoding anything.
pub fn sequential_precision(data: &[u8]) -> Option<u8> {
    if data.get(..2) != Some(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    while i + 4 < data.len() {
        if data[i] != 0xFF {
            return None;
        }
        let m = data[i + 1];
        if m == 0xFF {
            i += 1;
            continue;
        }
        if m == 0xC0 || m == 0xC1 {
            return data.get(i + 4).copied();
        }
        if (0xC2..=0xCF).contains(&m) && m != 0xC4 && m != 0xC8 && m != 0xCC || m == 0xDA {
            return None;
        }
        i += 2 + u16_at(data, i + 2).ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook IDCT in floating point, for a check of the integer one.
    fn idct_float(coef: &[i16; 64], q: &[u16; 64], precision: u8) -> [f64; 64] {
        let mut qn = [0f64; 64];
        for k in 0..64 {
            qn[ZIGZAG[k]] = f64::from(q[k]);
        }
        let c = |u: usize| if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
        let mut out = [0f64; 64];
        for y in 0..8 {
            for x in 0..8 {
                let mut s = 0.0;
                for v in 0..8 {
                    for u in 0..8 {
                        s += c(u)
                            * c(v)
                            * f64::from(coef[v * 8 + u])
                            * qn[v * 8 + u]
                            * (((2 * x + 1) * u) as f64 * std::f64::consts::PI / 16.0).cos()
                            * (((2 * y + 1) * v) as f64 * std::f64::consts::PI / 16.0).cos();
                    }
                }
                out[y * 8 + x] = s / 4.0 + f64::from(1u32 << (precision - 1));
            }
        }
        out
    }

    #[test]
    fn integer_idct_is_within_one_of_the_exact_one() {
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as i64
        };
        for precision in [8u8, 12] {
            for _ in 0..200 {
                let mut coef = [0i16; 64];
                let scale = if precision == 8 { 40 } else { 600 };
                for (k, v) in coef.iter_mut().enumerate() {
                    if k == 0 || rnd() % 3 == 0 {
                        *v = ((rnd() % (2 * scale + 1)) - scale) as i16 / (1 + k as i16 / 8);
                    }
                }
                let q = [1u16; 64];
                let mut out = [0u16; 64];
                idct_islow(&coef, &q, precision, &mut out);
                let exact = idct_float(&coef, &q, precision);
                let max = f64::from((1u32 << precision) - 1);
                for i in 0..64 {
                    let e = exact[i].clamp(0.0, max);
                    assert!(
                        (f64::from(out[i]) - e).abs() <= 1.0,
                        "{precision} bit, {i}: {} vs {e}",
                        out[i]
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_streams_are_errors_not_panics() {
        assert!(decode(&[], None).is_err());
        assert!(decode(&[0xFF, 0xD8], None).is_err());
        assert!(decode(&[0xFF, 0xD8, 0xFF, 0xD9], None).is_err());
        // A frame header claiming an absurd size, then the end.
        let e = decode(
            &[0xFF, 0xD8, 0xFF, 0xC1, 0, 11, 12, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0],
            None,
        )
        .expect_err("big");
        assert!(e.contains("samples"), "{e}");
        let e = decode(&[0xFF, 0xD8, 0xFF, 0xC2, 0, 11, 8, 0, 8, 0, 8, 1, 1, 0x11, 0], None).expect_err("progressive");
        assert!(e.contains("progressive"), "{e}");
    }
}
