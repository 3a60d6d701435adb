//! A structural walk over a DICOM data set's bytes before dicom-rs parses them: every
//! element's declared length must fit in the bytes that hold it (the file, or the sequence
//! item around it), and sequences may nest only [`MAX_DEPTH`] deep.
//!
//! Why by hand: dicom-rs allocates (and zero-fills) each value's declared length before it
//! reads the value, so a 674-byte file declaring a 3.7 GB element made it allocate and
//! clear 3.7 GB before failing (pydicom's `UN_sequence.dcm` took 34 s); and a deeply nested
//! sequence would recurse without bound. This walk reads only tags and lengths, in one pass,
//! and finds where a top-level element starts (to stop before the pixel data when only the
//! header is wanted).
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::StandardDataDictionary;

/// How deep sequences may nest (real files nest a few levels).
pub const MAX_DEPTH: usize = 32;

/// A data set's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub explicit: bool,
    pub little: bool,
}

impl Encoding {
    pub const EXPLICIT_LE: Encoding = Encoding {
        explicit: true,
        little: true,
    };
    pub const IMPLICIT_LE: Encoding = Encoding {
        explicit: false,
        little: true,
    };
    pub const EXPLICIT_BE: Encoding = Encoding {
        explicit: true,
        little: false,
    };
}

const UNDEFINED: u32 = u32::MAX;
const ITEM: Tag = Tag(0xFFFE, 0xE000);
const ITEM_END: Tag = Tag(0xFFFE, 0xE00D);
const SEQ_END: Tag = Tag(0xFFFE, 0xE0DD);

struct Walker<'a> {
    b: &'a [u8],
    /// Where the data end but for zero bytes padding the file (some writers leave them).
    content_end: usize,
    /// Byte ranges of top-level UN elements of undefined length (CP-246: implicit VR items
    /// inside explicit VR data), which dicom-rs 0.10 parses as explicit VR and so misreads;
    /// no element this reader uses is one, and they are cut out before parsing.
    drop: std::cell::RefCell<Vec<(usize, usize)>>,
}

/// One element's header: its tag, VR (explicit, or `None` for implicit and items), the
/// value's length and where the value starts.
struct Header {
    tag: Tag,
    vr: Option<VR>,
    len: u32,
    value_at: usize,
}

impl Walker<'_> {
    fn u16(&self, at: usize, little: bool) -> Result<u16, String> {
        let s = self.b.get(at..at + 2).ok_or("the data end inside an element header")?;
        Ok(if little {
            u16::from_le_bytes([s[0], s[1]])
        } else {
            u16::from_be_bytes([s[0], s[1]])
        })
    }

    fn u32(&self, at: usize, little: bool) -> Result<u32, String> {
        let s = self.b.get(at..at + 4).ok_or("the data end inside an element header")?;
        Ok(if little {
            u32::from_le_bytes([s[0], s[1], s[2], s[3]])
        } else {
            u32::from_be_bytes([s[0], s[1], s[2], s[3]])
        })
    }

    fn header(&self, at: usize, enc: Encoding) -> Result<Header, String> {
        let tag = Tag(self.u16(at, enc.little)?, self.u16(at + 2, enc.little)?);
        if tag.0 == 0xFFFE || !enc.explicit {
            return Ok(Header {
                tag,
                vr: None,
                len: self.u32(at + 4, enc.little)?,
                value_at: at + 8,
            });
        }
        let code = self
            .b
            .get(at + 4..at + 6)
            .ok_or("the data end inside an element header")?;
        let vr = VR::from_binary([code[0], code[1]]).ok_or_else(|| {
            format!(
                "element ({:04X},{:04X}) has no valid VR ({:?}): not explicit-VR data, or damaged",
                tag.0,
                tag.1,
                String::from_utf8_lossy(code)
            )
        })?;
        // dicom-rs's rule (and the standard's): these VRs have a 2-byte length, every other
        // one (OB, OW, SQ, UN, UT, SV, UV...) a reserved pair and a 4-byte length.
        let long = !matches!(
            vr,
            VR::AE
                | VR::AS
                | VR::AT
                | VR::CS
                | VR::DA
                | VR::DS
                | VR::DT
                | VR::FL
                | VR::FD
                | VR::IS
                | VR::LO
                | VR::LT
                | VR::PN
                | VR::SH
                | VR::SL
                | VR::SS
                | VR::ST
                | VR::TM
                | VR::UI
                | VR::UL
                | VR::US
        );
        Ok(if long {
            Header {
                tag,
                vr: Some(vr),
                len: self.u32(at + 8, enc.little)?,
                value_at: at + 12,
            }
        } else {
            Header {
                tag,
                vr: Some(vr),
                len: u32::from(self.u16(at + 6, enc.little)?),
                value_at: at + 8,
            }
        })
    }

    /// Whether an element of this header holds items (a sequence).
    fn is_sequence(h: &Header) -> bool {
        match h.vr {
            Some(vr) => vr == VR::SQ || (vr == VR::UN && h.len == UNDEFINED),
            None => {
                h.len == UNDEFINED && h.tag != Tag(0x7FE0, 0x0010)
                    || StandardDataDictionary
                        .by_tag(h.tag)
                        .is_some_and(|e| matches!(e.vr(), VirtualVr::Exact(VR::SQ)))
            }
        }
    }

    /// Walks the elements in `[at, end)` (`end` `None`: until an item delimiter, for an
    /// item of undefined length). Returns where the walk ended, and where the top-level
    /// element `stop` starts if it is met (only at depth 0).
    fn elements(
        &self,
        mut at: usize,
        end: Option<usize>,
        enc: Encoding,
        depth: usize,
        stop: Option<Tag>,
    ) -> Result<(usize, Option<usize>), String> {
        if depth > MAX_DEPTH {
            return Err(format!("sequences nested over {MAX_DEPTH} deep"));
        }
        let limit = end.unwrap_or(self.b.len());
        loop {
            if at == limit && end.is_some() || at >= self.b.len() && end.is_none() && depth == 0 {
                return Ok((at, None));
            }
            // Zero bytes padding the end of a file: the end.
            if depth == 0 && end.is_none() && at >= self.content_end {
                return Ok((at, None));
            }
            if at >= limit {
                return Err("an element runs past the end of the item or file that holds it".into());
            }
            let h = self.header(at, enc)?;
            if depth == 0 && stop == Some(h.tag) {
                return Ok((at, Some(at)));
            }
            if h.tag == ITEM_END && end.is_none() {
                return Ok((h.value_at, None));
            }
            if h.tag.0 == 0xFFFE {
                return Err(format!(
                    "an item tag (FFFE,{:04X}) where an element was expected (damaged data)",
                    h.tag.1
                ));
            }
            if Self::is_sequence(&h) {
                // Undefined-length UN holds implicit little-endian items (CP-246).
                let un = h.vr == Some(VR::UN);
                let inner = if un { Encoding::IMPLICIT_LE } else { enc };
                let start = at;
                at = self.items(h.value_at, h.len, inner, depth + 1, limit)?;
                if un {
                    if depth > 0 {
                        return Err(format!(
                            "a sequence stored as UN of undefined length inside another sequence ({:04X},{:04X}) is not read",
                            h.tag.0, h.tag.1
                        ));
                    }
                    self.drop.borrow_mut().push((start, at));
                }
            } else if h.len == UNDEFINED {
                // Encapsulated pixel data: fragments until the sequence delimiter.
                at = self.fragments(h.value_at, enc)?;
            } else {
                // dicom-rs reads only whole values of a binary VR and would start the next
                // element inside the rest.
                let vr =
                    h.vr.or_else(|| match StandardDataDictionary.by_tag(h.tag).map(|e| e.vr()) {
                        Some(VirtualVr::Exact(vr)) => Some(vr),
                        _ => None,
                    });
                let size = match vr {
                    Some(VR::US | VR::SS | VR::OW) => 2,
                    Some(VR::UL | VR::SL | VR::FL | VR::AT | VR::OF | VR::OL) => 4,
                    Some(VR::FD | VR::SV | VR::UV | VR::OD | VR::OV) => 8,
                    _ => 1,
                };
                if h.len % size != 0 {
                    return Err(format!(
                        "element ({:04X},{:04X}) of VR {} holds {} bytes, not whole values of {size} bytes",
                        h.tag.0,
                        h.tag.1,
                        vr.map_or("?", |v| v.to_string()),
                        h.len
                    ));
                }
                at = self.skip(h.value_at, h.len, limit)?;
            }
        }
    }

    fn skip(&self, at: usize, len: u32, limit: usize) -> Result<usize, String> {
        let next = at.checked_add(len as usize).filter(|&n| n <= limit).ok_or_else(|| {
            format!(
                "an element declares {len} bytes at byte {at}, where only {} remain in what holds it",
                limit.saturating_sub(at)
            )
        })?;
        Ok(next)
    }

    /// A sequence's items, from `at`; `len` its declared length (or undefined).
    fn items(&self, at: usize, len: u32, enc: Encoding, depth: usize, limit: usize) -> Result<usize, String> {
        let end = if len == UNDEFINED {
            None
        } else {
            Some(self.skip(at, len, limit)?)
        };
        let mut p = at;
        loop {
            if end == Some(p) {
                return Ok(p);
            }
            let h = self.header(p, Encoding { explicit: false, ..enc })?;
            match h.tag {
                SEQ_END if end.is_none() => return Ok(h.value_at),
                ITEM => {
                    if h.len == UNDEFINED {
                        p = self.elements(h.value_at, None, enc, depth, None)?.0;
                    } else {
                        let item_end = self.skip(h.value_at, h.len, end.unwrap_or(self.b.len()))?;
                        let (q, _) = self.elements(h.value_at, Some(item_end), enc, depth, None)?;
                        p = q;
                    }
                }
                t => {
                    return Err(format!(
                        "({:04X},{:04X}) inside a sequence where an item was expected (damaged data)",
                        t.0, t.1
                    ))
                }
            }
            if end.is_some_and(|e| p > e) {
                return Err("a sequence item runs past its sequence".into());
            }
        }
    }

    /// Encapsulated pixel data's fragments, from `at`, until the sequence delimiter.
    fn fragments(&self, mut at: usize, enc: Encoding) -> Result<usize, String> {
        loop {
            let h = self.header(at, Encoding { explicit: false, ..enc })?;
            match h.tag {
                SEQ_END => return Ok(h.value_at),
                ITEM if h.len != UNDEFINED => at = self.skip(h.value_at, h.len, self.b.len())?,
                _ => return Err("encapsulated pixel data that are not a list of fragments (damaged data)".into()),
            }
        }
    }
}

/// What [`check`] found.
pub struct Checked {
    /// Where the top-level element asked for starts, or the end of the data.
    pub stop: usize,
    /// Byte ranges to cut out before dicom-rs parses the data (see [`Walker`]).
    pub drop: Vec<(usize, usize)>,
}

impl Checked {
    /// The data up to `stop`, without the ranges to drop.
    pub fn data<'a>(&self, b: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        if self.drop.is_empty() {
            return b[..self.stop].into();
        }
        let mut out = Vec::with_capacity(self.stop);
        let mut at = 0;
        for &(s, e) in &self.drop {
            if s >= self.stop {
                break;
            }
            out.extend_from_slice(&b[at..s]);
            at = e;
        }
        if at < self.stop {
            out.extend_from_slice(&b[at..self.stop]);
        }
        out.into()
    }
}

/// Checks the data set in `b` (see the module documentation); says where the top-level
/// element `stop` starts (the end when it is absent) and what to cut out.
pub fn check(b: &[u8], enc: Encoding, stop: Option<Tag>) -> Result<Checked, String> {
    let w = Walker {
        b,
        content_end: b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1),
        drop: Default::default(),
    };
    let (end, at) = w.elements(0, None, enc, 0, stop)?;
    Ok(Checked {
        stop: at.unwrap_or(end),
        drop: w.drop.into_inner(),
    })
}

/// Where the file meta group that starts at `b[0]` (just after `DICM`) ends: its elements
/// (explicit VR little endian, group 0002) walked with the same checks.
pub fn meta_group_end(b: &[u8]) -> Result<usize, String> {
    let w = Walker {
        b,
        content_end: b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1),
        drop: Default::default(),
    };
    let mut at = 0;
    while at + 4 <= b.len() && w.u16(at, true)? == 0x0002 {
        let h = w.header(at, Encoding::EXPLICIT_LE)?;
        if h.len == UNDEFINED {
            return Err("a file meta element of undefined length".into());
        }
        at = w.skip(h.value_at, h.len, b.len())?;
    }
    if at == 0 {
        return Err("no file meta group after DICM".into());
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(tag.0.to_le_bytes());
        v.extend(tag.1.to_le_bytes());
        v.extend(vr);
        v.extend((value.len() as u16).to_le_bytes());
        v.extend(value);
        v
    }

    #[test]
    fn lengths_that_do_not_fit_and_deep_nesting_are_refused() {
        let mut ok = el((0x0008, 0x0060), b"CS", b"CT");
        ok.extend(el((0x0028, 0x0010), b"US", &[16, 0]));
        assert_eq!(check(&ok, Encoding::EXPLICIT_LE, None).map(|c| c.stop), Ok(ok.len()));
        assert_eq!(
            check(&ok, Encoding::EXPLICIT_LE, Some(Tag(0x0028, 0x0010))).map(|c| c.stop),
            Ok(10)
        );
        // A UN element declaring 3.7 GB in a small file.
        let mut bomb = ok.clone();
        bomb.extend([0x08, 0x00, 0x15, 0x11, b'U', b'N', 0, 0]);
        bomb.extend(0xE000_0000u32.to_le_bytes());
        let e = check(&bomb, Encoding::EXPLICIT_LE, None).err().expect("bomb");
        assert!(e.contains("3758096384 bytes"), "{e}");
        // Sequences of undefined length nested 100 deep.
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend([0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
            deep.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        }
        let e = check(&deep, Encoding::EXPLICIT_LE, None).err().expect("deep");
        assert!(e.contains("nested"), "{e}");
        // SV and UV have 4-byte lengths: a huge one is caught, not read as 0.
        let mut sv = ok.clone();
        sv.extend([0x08, 0x00, 0x20, 0x00, b'S', b'V', 0, 0]);
        sv.extend(0xE000_0008u32.to_le_bytes());
        sv.extend([b'O', b'B', 0, 0, 0, 0, 0, 0]);
        assert!(check(&sv, Encoding::EXPLICIT_LE, None).is_err());
        let mut sv_ok = ok.clone();
        sv_ok.extend([0x08, 0x00, 0x20, 0x00, b'S', b'V', 0, 0, 8, 0, 0, 0]);
        sv_ok.extend(7i64.to_le_bytes());
        assert_eq!(
            check(&sv_ok, Encoding::EXPLICIT_LE, None).map(|c| c.stop),
            Ok(sv_ok.len())
        );
        // Thousands of empty implicit elements before a stray byte: linear, not quadratic.
        let mut pad = vec![0u8; 8 << 20];
        pad.push(1);
        let t0 = std::time::Instant::now();
        assert!(check(&pad, Encoding::IMPLICIT_LE, None).is_err());
        assert!(t0.elapsed().as_secs() < 10, "{:?}", t0.elapsed());
        // Truncated inside a header.
        assert!(check(&ok[..ok.len() - 3], Encoding::EXPLICIT_LE, None).is_err());
    }
}
