//! The page itself: a fixed HTML shell (`page.html`, `page.css`, `page.js`, all inline)
//! and the data as one JSON document in a `<script type="application/json">` element. The
//! script builds every element from that data with `textContent` and `setAttribute`, never
//! by parsing HTML, so nothing in a name, a series or a warning can become markup or code;
//! the JSON is escaped so that it cannot end its element (`<`, `>`, `&`, U+2028/9 as
//! `\uXXXX`). A Content-Security-Policy forbids every fetch but images beside the page and
//! `data:` images.
use std::collections::HashSet;
use std::path::Path;

use serde_json::{json, Value};

use super::{Item, Made, Section};
use crate::InferError;

/// The page's first bytes: how a rerun knows the file it replaces is a page of ours.
pub const MAGIC: &str = "<!doctype html>\n<!-- nodule review page";

const SHELL: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// What the page shows.
pub(super) struct Page<'a> {
    pub title: &'a str,
    pub source: &'a str,
    pub model_sha256: Option<&'a str>,
    pub operating_point: &'a str,
    pub score_name: &'a str,
    pub bar_mm: Option<f64>,
    pub spacing_mm: Option<f64>,
    pub warnings: &'a [String],
    pub charts: &'a [(String, Vec<u8>)],
    pub items: &'a [Item],
    /// Each item's thumbnail URL (relative, or a data: URI), if it has one.
    pub thumbs: &'a [Option<String>],
    pub sections: &'a [Section],
}

/// A number for JSON: `null` when it is not finite.
fn n(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

fn data_uri(png: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// The data the script renders.
fn data(p: &Page) -> Value {
    let items: Vec<Value> = p
        .items
        .iter()
        .zip(p.thumbs)
        .map(|(i, t)| {
            json!({
                "n": i.name,
                "s": i.series,
                "c": i.centre.map(|c| c.map(n)),
                "l": i.label,
                "z": n(i.logit),
                "p": n(i.p),
                "d": i.decision,
                "t": t,
                "e": i.problem,
            })
        })
        .collect();
    let sections: Vec<Value> = p
        .sections
        .iter()
        .map(|s| json!({"id": s.id, "title": s.title, "note": s.note, "items": s.items}))
        .collect();
    let charts: Vec<Value> = p
        .charts
        .iter()
        .map(|(t, b)| json!({"title": t, "src": data_uri(b)}))
        .collect();
    json!({
        "title": p.title,
        "source": p.source,
        "model_sha256": p.model_sha256,
        "operating_point": p.operating_point,
        "score_name": p.score_name,
        "bar_mm": p.bar_mm,
        "spacing_mm": p.spacing_mm,
        "warnings": p.warnings,
        "charts": charts,
        "items": items,
        "sections": sections,
        "tool": format!("infer gallery {}", env!("CARGO_PKG_VERSION")),
    })
}

/// JSON safe inside a `<script>` element: nothing in it can close the element or open a
/// comment, whatever the strings hold.
pub fn script_safe_json(v: &Value) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + 64);
    for c in s.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub(super) fn render(p: &Page) -> String {
    SHELL
        .replace("{{TITLE}}", &escape_html(p.title))
        .replace("{{CSS}}", CSS)
        .replace("{{JS}}", JS)
        // Last: the data may hold any of the markers above, which must stay as they are.
        .replace("{{DATA}}", &script_safe_json(&data(p)))
}

/// Thumbnails embedded as data: URIs.
pub(super) fn embed_thumbs(made: &[Made]) -> Vec<Option<String>> {
    made.iter()
        .map(|m| m.as_ref().ok().map(|(png, _)| data_uri(png)))
        .collect()
}

/// A path segment for a URL: every byte but the unreserved ones percent-encoded.
fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The thumbnails' file names are their content's sha256 (16 hex digits): a page only ever
/// names files that were complete before it was written, whatever was killed when, and a
/// rerun rewrites nothing that did not change.
fn thumb_name(png: &[u8]) -> String {
    format!("t_{}.png", &files::sha256_bytes(png)[..16])
}

/// Writes the thumbnails into `dir` (the page's folder beside it); returns each item's URL
/// relative to the page, and the bytes written.
pub(super) fn write_thumbs(dir: &Path, made: &[Made]) -> Result<(Vec<Option<String>>, u64), InferError> {
    std::fs::create_dir_all(dir).map_err(|e| files::Error::io(dir, e))?;
    let folder = dir
        .file_name()
        .map_or_else(String::new, |n| url_segment(&n.to_string_lossy()));
    let mut urls = Vec::with_capacity(made.len());
    let mut bytes = 0u64;
    let mut written = HashSet::new();
    for m in made {
        let Ok((png, _)) = m else {
            urls.push(None);
            continue;
        };
        let name = thumb_name(png);
        if written.insert(name.clone()) {
            let p = dir.join(&name);
            let same = std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.len() == png.len() as u64);
            if !same {
                write_thumb(&p, png)?;
            }
            bytes += png.len() as u64;
        }
        urls.push(Some(format!("{folder}/{name}")));
    }
    Ok((urls, bytes))
}

/// One thumbnail: a temporary file renamed into place (no fsync per file: thousands of
/// them; a kill leaves either no file or the whole one, and the page that names it is
/// written, synced, after all of them).
fn write_thumb(p: &Path, png: &[u8]) -> Result<(), InferError> {
    let dir = p.parent().unwrap_or(Path::new("."));
    let mut t = tempfile::Builder::new()
        .prefix(".tmp-thumb-")
        .tempfile_in(dir)
        .map_err(|e| files::Error::io(dir, e))?;
    std::io::Write::write_all(&mut t, png).map_err(|e| files::Error::io(p, e))?;
    t.persist(p).map_err(|e| files::Error::io(p, e.error))?;
    Ok(())
}

/// After the page is written: removes the thumbnails of earlier pages that this one does
/// not show (only `t_*.png` files; anything else in the folder is left).
pub(super) fn remove_unused_thumbs(dir: &Path, urls: &[Option<String>]) {
    let keep: HashSet<&str> = urls.iter().flatten().filter_map(|u| u.rsplit('/').next()).collect();
    // files-exempt: listing our own thumbnails' folder to remove what no page names.
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("t_") && name.ends_with(".png") && name.len() == "t_".len() + 16 + ".png".len();
        if ours && !keep.contains(name.as_str()) && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_a_script_element_cannot_close_it() {
        let v = json!({"n": "</script><script>alert(1)</script><!--", "u": "a\u{2028}b&c"});
        let s = script_safe_json(&v);
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&') && !s.contains('\u{2028}'));
        let back: Value = serde_json::from_str(&s).expect("still JSON");
        assert_eq!(back, v);
        assert_eq!(
            escape_html("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_segment("my review#1?"), "my%20review%231%3F");
    }
}
