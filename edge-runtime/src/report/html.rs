//! The report's `index.html`: one self-contained page (inline style, one small inline script
//! that marks pictures that failed to load), pictures by relative path.

use std::fmt::Write;
use std::path::Path;

use super::{thumb_file, BankSummary, ClusterSummary, NovelFrame, SIZES_FILE, THUMBS_DIR};
use crate::bank::identity::BankIdentity;
use crate::bank::MemoryBank;

const STYLE: &str = "
body { font-family: sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { margin-bottom: 4px; }
.meta { color: #555; margin-top: 0; }
nav a { margin-right: 10px; }
section.cluster { background: #fff; border: 1px solid #ddd; border-radius: 6px;
  padding: 8px 12px; margin: 12px 0; }
section.cluster h3 { margin: 4px 0 8px; }
.row { display: flex; gap: 16px; align-items: flex-start; }
figure { margin: 0; text-align: center; font-size: 12px; color: #555; }
figure.medoid img { width: 96px; height: 96px; }
.grid { display: flex; flex-wrap: wrap; gap: 4px; }
.grid img, td img { width: 56px; height: 56px; }
img { image-rendering: pixelated; border: 1px solid #ccc; background: #eee; }
img.broken { border: 2px solid #d00; }
.none { display: inline-block; width: 56px; height: 56px; font-size: 10px; color: #777;
  border: 1px dashed #bbb; text-align: center; line-height: 56px; }
table { border-collapse: collapse; background: #fff; }
td, th { border: 1px solid #ddd; padding: 4px 8px; font-size: 13px; text-align: left; }
";

/// Marks every picture that did not load and counts them on `<body data-broken-images>`, so
/// a person sees a red frame and a headless browser can check the page.
const CHECK_IMAGES: &str = "
window.addEventListener('load', function () {
  var broken = 0;
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    if (!(img.complete && img.naturalWidth > 0)) { img.classList.add('broken'); broken++; }
  }
  document.body.setAttribute('data-broken-images', String(broken));
});
";

/// The whole page. `has_thumb(seq)` says whether the thumbnail file of entry `seq` exists.
/// `adaptation` is the adaptation section's HTML.
pub fn page(
    summary: &BankSummary,
    identity: Option<&BankIdentity>,
    bank: &MemoryBank,
    adaptation: &str,
    has_thumb: impl Fn(u64) -> bool,
) -> String {
    let mut out = String::new();
    let title = format!("Memory bank {}", bank.dir().display());
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n\
         <body data-broken-images=\"unchecked\">\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let model = identity.map_or_else(|| "not recorded".to_string(), BankIdentity::describe);
    let _ = writeln!(
        out,
        "<p class=\"meta\">{} entries stored of {} frames seen · {} clusters · {} novel frames \
         stored · model: {}</p>",
        bank.len(),
        bank.seen(),
        summary.clusters.len(),
        summary.novel_total,
        escape(&model)
    );
    out.push_str("<nav>Clusters: ");
    for c in &summary.clusters {
        let _ = write!(out, "<a href=\"#c{0}\">{0}</a>", c.id);
    }
    out.push_str(
        "<a href=\"#novel\">novel frames</a><a href=\"#adaptation\">adaptation</a></nav>\n",
    );
    let _ = writeln!(
        out,
        "<h2>Cluster sizes over time</h2>\n<img src=\"{SIZES_FILE}\" alt=\"cluster sizes over \
         time\" style=\"image-rendering: auto\">"
    );
    out.push_str("<h2>Clusters</h2>\n");
    for c in &summary.clusters {
        cluster_section(&mut out, c, bank, &has_thumb);
    }
    novel_section(&mut out, summary, bank, &has_thumb);
    out.push_str(adaptation);
    let _ = write!(out, "<script>{CHECK_IMAGES}</script>\n</body>\n</html>\n");
    out
}

fn cluster_section(
    out: &mut String,
    c: &ClusterSummary,
    bank: &MemoryBank,
    has_thumb: &impl Fn(u64) -> bool,
) {
    let _ = write!(
        out,
        "<section class=\"cluster\" id=\"c{0}\">\n<h3>Cluster {0} · {1} frame{2}</h3>\n\
         <div class=\"row\">\n<figure class=\"medoid\">{3}<figcaption>medoid</figcaption></figure>\n\
         <div class=\"grid\">",
        c.id,
        c.size,
        if c.size == 1 { "" } else { "s" },
        picture(bank, c.medoid, has_thumb)
    );
    for &seq in &c.shown {
        out.push_str(&picture(bank, seq, has_thumb));
    }
    if c.size > c.shown.len() {
        let _ = write!(
            out,
            "<span class=\"more\">… and {} more</span>",
            c.size - c.shown.len()
        );
    }
    out.push_str("</div>\n</div>\n</section>\n");
}

fn novel_section(
    out: &mut String,
    summary: &BankSummary,
    bank: &MemoryBank,
    has_thumb: &impl Fn(u64) -> bool,
) {
    let _ = writeln!(
        out,
        "<h2 id=\"novel\">Novel frames</h2>\n<p class=\"meta\">{} stored frames were novel when \
         they arrived (far from every cluster); the newest {} are listed.</p>",
        summary.novel_total,
        summary.novel.len()
    );
    if summary.novel.is_empty() {
        return;
    }
    out.push_str(
        "<table>\n<tr><th>frame</th><th>picture</th><th>time (UTC)</th><th>cluster</th>\
         <th>distance</th><th>novelty</th><th>source</th></tr>\n",
    );
    for n in &summary.novel {
        novel_row(out, n, bank, has_thumb);
    }
    out.push_str("</table>\n");
}

fn novel_row(
    out: &mut String,
    n: &NovelFrame,
    bank: &MemoryBank,
    has_thumb: &impl Fn(u64) -> bool,
) {
    let _ = writeln!(
        out,
        "<tr><td>{frame}</td><td>{picture}</td><td>{time}</td>\
         <td><a href=\"#c{cluster}\">{cluster}</a></td><td>{distance:.3}</td>\
         <td>{novelty:.2}</td><td>{source}</td></tr>",
        frame = n.frame_id,
        picture = picture(bank, n.seq, has_thumb),
        time = utc(n.timestamp_ms),
        cluster = n.cluster_id,
        distance = n.distance,
        novelty = n.novelty,
        source = escape(&n.source)
    );
}

/// A thumbnail linked to its source file (or, when the source is no file here, to itself),
/// or a placeholder for an entry stored without one.
fn picture(bank: &MemoryBank, seq: u64, has_thumb: &impl Fn(u64) -> bool) -> String {
    let Some(e) = bank.get(seq) else {
        return String::new();
    };
    let tip = escape(&format!(
        "frame {} · {} · {}",
        e.meta.frame_id,
        e.meta.source,
        utc(e.meta.timestamp_ms)
    ));
    if !has_thumb(seq) {
        return format!("<span class=\"none\" title=\"{tip}\">no thumbnail</span>");
    }
    let src = format!("{THUMBS_DIR}/{}", thumb_file(seq));
    let href = source_url(&e.meta.source).unwrap_or_else(|| src.clone());
    format!(
        "<a href=\"{}\"><img src=\"{src}\" title=\"{tip}\" alt=\"frame {}\"></a>",
        escape(&href),
        e.meta.frame_id
    )
}

/// A `file://` URL of `source` when it names a file on this machine.
fn source_url(source: &str) -> Option<String> {
    let path = std::fs::canonicalize(Path::new(source)).ok()?;
    if !path.is_file() {
        return None;
    }
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            url.push(b as char);
        } else {
            let _ = write!(url, "%{b:02X}");
        }
    }
    Some(url)
}

/// `YYYY-MM-DD HH:MM:SS` of milliseconds since the Unix epoch.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_match_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        // 2000-02-29 12:34:56 UTC, a leap day.
        assert_eq!(utc(951_827_696_000), "2000-02-29 12:34:56");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20");
    }

    #[test]
    fn text_is_escaped_and_only_real_files_get_file_urls() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert!(source_url("fashion-mnist").is_none());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a b#.png");
        std::fs::write(&file, b"x").unwrap();
        let url = source_url(file.to_str().unwrap()).unwrap();
        assert!(
            url.starts_with("file:///") && url.ends_with("/a%20b%23.png"),
            "{url}"
        );
    }
}
