//! The report as one self-contained HTML page: inline CSS and SVG, no
//! network, opened from a file or served at the live server's `/`.
//!
//! Top to bottom: the totals, the leak check's summary, the scopes (with
//! what each grew since the report before, in a live one), the flamegraph
//! of live bytes by scope (with the `formats` feature), the loss records
//! and the call-sites holding the most, each with its stack.

use crate::alloc::thread;
use crate::report::folded::function_of;
use crate::report::leak::{BlockTotal, LeakKind};
use crate::report::model::{Callsite, Report, PRELOADED_NO_SCOPES};
use crate::report::text::{where_of, PerRun, Signed, SignedPerRun, Thousands};
use std::fmt::Write;

/// Loss records and call-sites listed (the largest); the JSON has them all.
const MAX_ROWS: usize = 100;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}\
.muted{color:#666}table{border-collapse:collapse}\
th,td{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right;vertical-align:top}\
th:first-child,td:first-child{text-align:left}td.stack{text-align:left}\
tr.lost td{background:#fdecea}code{font:12px ui-monospace,monospace}\
ol{margin:4px 0;padding-left:24px}iframe{width:100%;height:520px;border:1px solid #ddd}\
summary{cursor:pointer}";

impl Report {
    /// The report as one HTML page, with no outside resources: what
    /// `LEAKSCOPE_REPORT=<path>.html` writes and the live server's `/` serves.
    pub fn to_html(&self) -> String {
        thread::untracked(|| self.html())
    }

    /// [`Report::to_html`], written to `w`.
    pub fn write_html(&self, mut w: impl std::io::Write) -> std::io::Result<()> {
        w.write_all(self.to_html().as_bytes())
    }

    fn html(&self) -> String {
        let mut h = String::with_capacity(64 * 1024);
        let t = &self.totals;
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>leakscope: process {pid}</title><style>{STYLE}</style></head><body>\
             <h1>leakscope report, process {pid}</h1><p class=\"muted\" id=\"totals\">\
             live: {} bytes in {} blocks; allocated in all: {} bytes in {} blocks; peak live: {} bytes; \
             {:.1} s after the start; stacks by {}</p>",
            Thousands(t.live_bytes),
            Thousands(t.live_blocks),
            Thousands(t.total_bytes),
            Thousands(t.total_blocks),
            Thousands(t.peak_live_bytes),
            self.seconds,
            self.unwinder.as_str().replace('_', " "),
            pid = self.pid,
        );
        if self.preloaded {
            let _ = write!(h, "<p class=\"muted\">{}.</p>", esc(PRELOADED_NO_SCOPES));
        }
        if self.sample_bytes > 0 {
            let _ = write!(
                h,
                "<p class=\"muted\">Sampling mode, one stack per {} bytes: call-site and scope \
                 figures are estimates; totals and runs are exact.</p>",
                Thousands(self.sample_bytes)
            );
        }
        self.html_summary(&mut h);
        self.html_scopes(&mut h);
        if let Some(svg) = self.timeline_svg() {
            h.push_str("<h2>Over time</h2>");
            h.push_str(&svg);
        }
        self.html_flamegraph(&mut h);
        self.html_loss_records(&mut h);
        self.html_holders(&mut h);
        self.html_callsites(&mut h);
        h.push_str("</body></html>\n");
        h
    }

    fn html_summary(&self, h: &mut String) {
        let Some(lc) = &self.leak_check else {
            return;
        };
        h.push_str("<h2>Leak summary</h2>");
        if let Some(why) = &lc.error {
            let _ = write!(
                h,
                "<p id=\"leak-summary\">The leak check did not run: {}</p>",
                esc(why)
            );
            return;
        }
        h.push_str("<table id=\"leak-summary\"><tr><th></th><th>bytes</th><th>blocks</th></tr>");
        let rows: [(&str, BlockTotal); 5] = [
            ("definitely lost", lc.definitely_lost),
            ("indirectly lost", lc.indirectly_lost),
            ("possibly lost", lc.possibly_lost),
            ("still reachable", lc.still_reachable),
            ("suppressed", lc.suppressed),
        ];
        for (name, a) in rows {
            let lost = a.bytes > 0 && name.ends_with("lost") && name != "possibly lost";
            let _ = write!(
                h,
                "<tr{}><td>{name}</td><td>{}</td><td>{}</td></tr>",
                if lost { " class=\"lost\"" } else { "" },
                Thousands(a.bytes),
                Thousands(a.blocks)
            );
        }
        h.push_str("</table>");
    }

    fn html_scopes(&self, h: &mut String) {
        if self.scopes.is_empty() {
            return;
        }
        let mut scopes: Vec<_> = self.scopes.iter().collect();
        scopes.sort_by(|a, b| (b.outstanding_bytes, &a.name).cmp(&(a.outstanding_bytes, &b.name)));
        h.push_str(
            "<h2>Scopes</h2><table id=\"scopes\"><tr><th>scope</th><th>runs</th>\
             <th>outstanding blocks</th><th>outstanding bytes</th><th>blocks per run</th>\
             <th>bytes per run</th><th>growing</th></tr>",
        );
        for s in scopes {
            let growing = if s.growing {
                format!(
                    "yes: {} bytes per run lately",
                    SignedPerRun(s.recent_bytes_per_run)
                )
            } else {
                String::new()
            };
            let _ = write!(
                h,
                "<tr data-scope=\"{name}\"{class}><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{growing}</td></tr>",
                Thousands(s.runs),
                Thousands(s.outstanding_blocks),
                Thousands(s.outstanding_bytes),
                PerRun(s.blocks_per_run()),
                PerRun(s.bytes_per_run()),
                name = esc(&s.name),
                class = if s.growing { " class=\"lost\"" } else { "" },
            );
        }
        h.push_str("</table>");
        let Some(g) = &self.changes else {
            return;
        };
        let since = g.seconds.map_or("the start".to_owned(), |s| {
            format!("the previous report, {s:.2} s ago")
        });
        let _ = write!(
            h,
            "<h2>Since {}</h2><table id=\"growth\"><tr><th>scope</th><th>runs</th>\
             <th>blocks</th><th>bytes</th><th>blocks per run</th><th>bytes per run</th></tr>",
            esc(&since)
        );
        for s in &g.scopes {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.name),
                Thousands(s.runs),
                Signed(s.outstanding_blocks),
                Signed(s.outstanding_bytes),
                SignedPerRun(s.blocks_per_run()),
                SignedPerRun(s.bytes_per_run()),
            );
        }
        h.push_str("</table>");
    }

    #[cfg(feature = "formats")]
    fn html_flamegraph(&self, h: &mut String) {
        let mut svg = Vec::new();
        if self.write_flamegraph(&mut svg).is_err() {
            return;
        }
        // In a frame of its own, loaded as an SVG document (not parsed as
        // HTML, as `srcdoc` would), so that its script and layout work as
        // they do with the file opened alone.
        let _ = write!(
            h,
            "<h2>Live bytes by scope</h2><iframe id=\"flamegraph\" title=\"flamegraph\" \
             src=\"data:image/svg+xml;base64,{}\"></iframe>",
            base64(&svg)
        );
    }

    #[cfg(not(feature = "formats"))]
    fn html_flamegraph(&self, _h: &mut String) {}

    fn html_loss_records(&self, h: &mut String) {
        let Some(lc) = self
            .leak_check
            .as_ref()
            .filter(|lc| !lc.loss_records.is_empty())
        else {
            return;
        };
        h.push_str(
            "<h2>Loss records</h2><table id=\"loss-records\"><tr><th>kind</th><th>bytes</th>\
             <th>blocks</th><th>scope</th><th>allocated at</th></tr>",
        );
        for r in lc.loss_records.iter().take(MAX_ROWS) {
            let lost = matches!(r.kind, LeakKind::DefinitelyLost | LeakKind::IndirectlyLost);
            let _ = write!(
                h,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"stack\">",
                if lost { " class=\"lost\"" } else { "" },
                r.kind.as_str().replace('_', " "),
                Thousands(r.bytes),
                Thousands(r.blocks),
                esc(r.scope.as_deref().unwrap_or("")),
            );
            stack(h, self.callsite(r.callsite));
            h.push_str("</td></tr>");
        }
        h.push_str("</table>");
    }

    /// Who holds each scope's outstanding blocks: its retention paths.
    fn html_holders(&self, h: &mut String) {
        let held = self.held_scopes();
        if held.is_empty() {
            return;
        }
        h.push_str(
            "<h2>Who holds it</h2><table id=\"holders\"><tr><th>scope</th><th>bytes</th>\
             <th>blocks</th><th>held by (the shortest way from a root)</th></tr>",
        );
        for s in held {
            for (lines, blocks, bytes) in self.holders(s).iter().take(MAX_ROWS) {
                let _ = write!(
                    h,
                    "<tr data-scope=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"stack\">",
                    esc(&s.name),
                    esc(&s.name),
                    Thousands(*bytes),
                    Thousands(*blocks),
                );
                let lines: Vec<String> = lines.iter().map(|l| esc(l)).collect();
                h.push_str(&lines.join("<br>"));
                h.push_str("</td></tr>");
            }
        }
        h.push_str("</table>");
    }

    fn html_callsites(&self, h: &mut String) {
        let mut live: Vec<&Callsite> = self.callsites.iter().filter(|c| c.live_bytes > 0).collect();
        if live.is_empty() {
            return;
        }
        live.sort_by(|a, b| (b.live_bytes, a.id).cmp(&(a.live_bytes, b.id)));
        h.push_str(
            "<h2>Call-sites holding the most</h2><table id=\"callsites\"><tr><th>live bytes</th>\
             <th>live blocks</th><th>peak bytes</th><th>allocated bytes</th><th>allocated at</th></tr>",
        );
        for c in live.into_iter().take(MAX_ROWS) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"stack\">",
                Thousands(c.live_bytes),
                Thousands(c.live_blocks),
                Thousands(c.peak_live_bytes),
                Thousands(c.total_bytes),
            );
            stack(h, Some(c));
            h.push_str("</td></tr>");
        }
        h.push_str("</table>");
    }
}

/// Lines of the timeline chart: the process, then each scope followed.
const COLORS: [&str; 13] = [
    "#222", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#aec7e8", "#98df8a",
];

impl Report {
    /// The timeline as a chart (SVG): live bytes over time, for the process
    /// and for each scope it follows; `None` without a timeline of two
    /// points or more. What the HTML page shows and `/timeline.svg` serves.
    pub fn timeline_svg(&self) -> Option<String> {
        let t = self.timeline.as_ref().filter(|t| t.points.len() >= 2)?;
        let (w, hgt, left, top, bottom) = (900.0, 300.0, 110.0, 20.0, 40.0);
        let (t0, t1) = (t.points.first()?.ms, t.points.last()?.ms);
        let span = (t1.saturating_sub(t0)).max(1) as f64;
        let max = t
            .points
            .iter()
            .map(|p| p.live_bytes)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        // A saved report may list its points out of order (fuzz/report_json):
        // one before the first is drawn at the left edge, not a panic.
        let x = |ms: u64| left + ms.saturating_sub(t0) as f64 / span * (w - left - 10.0);
        let y = |b: u64| top + (1.0 - b as f64 / max) * (hgt - top - bottom);
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" \
             font-family=\"system-ui,sans-serif\" font-size=\"12\">",
            hgt + 16.0 * (t.scopes.len() as f64 + 1.0)
        );
        let _ = write!(
            s,
            "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
             <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#999\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} bytes</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\
             <text x=\"{left}\" y=\"{}\">{:.1} s</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1} s</text>",
            hgt - bottom,
            w - 10.0,
            hgt - bottom,
            hgt - bottom,
            left - 4.0,
            top + 4.0,
            Thousands(max as u64),
            left - 4.0,
            hgt - bottom,
            hgt - bottom + 16.0,
            t0 as f64 / 1000.0,
            w - 10.0,
            hgt - bottom + 16.0,
            t1 as f64 / 1000.0,
        );
        let names = std::iter::once("all live bytes").chain(t.scopes.iter().map(String::as_str));
        for (i, name) in names.enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<String> = t
                .points
                .iter()
                .map(|p| {
                    let b = if i == 0 {
                        p.live_bytes
                    } else {
                        p.scope_bytes.get(i - 1).copied().unwrap_or(0)
                    };
                    format!("{:.1},{:.1}", x(p.ms), y(b))
                })
                .collect();
            let _ = write!(
                s,
                "<polyline data-series=\"{n}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"{}\" points=\"{}\"/>\
                 <rect x=\"{left}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
                 <text x=\"{}\" y=\"{}\">{n}</text>",
                if i == 0 { 2 } else { 1 },
                points.join(" "),
                left + 14.0,
                hgt + 16.0 * i as f64 + 9.0,
                n = esc(name),
                ly = hgt + 16.0 * i as f64,
            );
        }
        s.push_str("</svg>");
        Some(s)
    }
}

/// A call-site's stack: its allocating function, the frames folded under it.
fn stack(h: &mut String, site: Option<&Callsite>) {
    let Some(site) = site else {
        h.push_str("<span class=\"muted\">(not in this report)</span>");
        return;
    };
    let first = site.frames.first().map_or("???".to_owned(), function_of);
    let _ = write!(
        h,
        "<details><summary><code>{}</code></summary><ol>",
        esc(&first)
    );
    for f in &site.frames {
        let _ = write!(
            h,
            "<li><code>{}{}</code></li>",
            esc(&function_of(f)),
            esc(&where_of(f))
        );
    }
    h.push_str("</ol></details>");
}

/// Standard base64, padded.
#[cfg(feature = "formats")]
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `s` as HTML text or an attribute value.
fn esc(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    #[cfg(feature = "formats")]
    #[test]
    fn encodes_base64() {
        let enc = super::base64;
        assert_eq!(
            [
                enc(b""),
                enc(b"f"),
                enc(b"fo"),
                enc(b"foo"),
                enc(b"foob"),
                enc(b"\xff\xfe")
            ],
            ["", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "//4="]
        );
    }

    #[test]
    fn escapes_text_and_attributes() {
        assert_eq!(
            super::esc("<T as Tr>::f & \"x\" 'y'"),
            "&lt;T as Tr&gt;::f &amp; &quot;x&quot; &#39;y&#39;"
        );
    }
}
