//! HTML pieces, pure: the one escaping helper every dynamic value goes through, the page
//! frame, and server-drawn SVG charts (no script needed to see a chart).

use std::fmt::{self, Write as _};

use super::session::{Flash, Role, Session};

/// A value written into HTML text or a double-quoted attribute, escaped.
pub struct E<'a>(pub &'a str);

impl fmt::Display for E<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = 0;
        for (i, b) in self.0.bytes().enumerate() {
            let rep = match b {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                b'\'' => "&#39;",
                _ => continue,
            };
            f.write_str(&self.0[last..i])?;
            f.write_str(rep)?;
            last = i + 1;
        }
        f.write_str(&self.0[last..])
    }
}

/// `s` escaped, as a string.
pub fn esc(s: &str) -> String {
    E(s).to_string()
}

/// A query-string component, percent-encoded.
pub fn url_part(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The console's pages, for the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/console/`.
    Overview,
    /// `/console/keys`.
    Keys,
    /// `/console/alerts`.
    Alerts,
    /// `/console/safety`.
    Safety,
    /// `/console/leaks`.
    Leaks,
    /// `/console/cloud`.
    Cloud,
    /// `/console/audit`.
    Audit,
}

const NAV: &[(Nav, &str, &str)] = &[
    (Nav::Overview, "/console/", "Overview"),
    (Nav::Keys, "/console/keys", "Keys"),
    (Nav::Alerts, "/console/alerts", "Alerts &amp; incidents"),
    (Nav::Safety, "/console/safety", "Content safety"),
    (Nav::Leaks, "/console/leaks", "Leaked keys"),
    (Nav::Cloud, "/console/cloud", "Cloud"),
    (Nav::Audit, "/console/audit", "Audit"),
];

/// A whole page: `title`, the signed-in `session` (its role and CSRF token), the current
/// page in the navigation, `live` (seconds between refreshes of `<main>`; 0: none) and the
/// body already rendered.
pub fn page(title: &str, session: &Session, nav: Nav, live: u32, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    head(&mut h, title);
    h.push_str("<body><a class=\"skip\" href=\"#main\">Skip to content</a><header class=\"top\">");
    h.push_str("<span class=\"brand\">Stormwall</span><nav aria-label=\"Console\"><ul>");
    for (n, href, label) in NAV {
        let current = if *n == nav {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(h, "<li><a href=\"{href}\"{current}>{label}</a></li>");
    }
    let _ = write!(
        h,
        "</ul></nav><div class=\"who\"><span class=\"role role-{r}\">{r}</span>\
         <form method=\"post\" action=\"/console/logout\">{csrf}<button type=\"submit\">Sign out</button></form></div></header>",
        r = session.role.as_str(),
        csrf = csrf_field(session),
    );
    let live_attr = if live > 0 {
        format!(" data-live=\"{live}\"")
    } else {
        String::new()
    };
    let _ = write!(
        h,
        "<main id=\"main\" tabindex=\"-1\"{live_attr}><h1>{}</h1>",
        E(title)
    );
    if let Some(f) = &session.flash {
        flash(&mut h, f);
    }
    if session.role == Role::ReadOnly {
        h.push_str("<p class=\"note\">Read-only session: you can look at everything and change nothing.</p>");
    }
    h.push_str(body);
    h.push_str("</main></body></html>");
    h
}

fn head(h: &mut String, title: &str) {
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>{} · Stormwall console</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/console/static/console.css\">\
         <script src=\"/console/static/console.js\" defer></script></head>",
        E(title)
    );
}

fn flash(h: &mut String, f: &Flash) {
    match f {
        Flash::Secret { id, secret } => {
            let _ = write!(
                h,
                "<section class=\"secret\" role=\"status\" aria-labelledby=\"secret-h\">\
                 <h2 id=\"secret-h\">New key {id}: copy it now</h2>\
                 <p>This is the only time the key is shown; only its hash is kept.</p>\
                 <p><code id=\"new-secret\" class=\"secret-value\">{secret}</code> \
                 <button type=\"button\" data-copy=\"new-secret\">Copy</button> \
                 <span class=\"copied\" aria-live=\"polite\"></span></p></section>",
                id = E(id),
                secret = E(secret)
            );
        }
        Flash::Notice(m) => {
            let _ = write!(h, "<p class=\"flash ok\" role=\"status\">{}</p>", E(m));
        }
        Flash::Error(m) => {
            let _ = write!(h, "<p class=\"flash err\" role=\"alert\">{}</p>", E(m));
        }
    }
}

/// The sign-in page (no session yet).
pub fn login_page(error: Option<&str>) -> String {
    let mut h = String::new();
    head(&mut h, "Sign in");
    h.push_str("<body class=\"login\"><main id=\"main\"><h1>Stormwall console</h1>");
    if let Some(e) = error {
        let _ = write!(h, "<p class=\"flash err\" role=\"alert\">{}</p>", E(e));
    }
    h.push_str(
        "<form method=\"post\" action=\"/console/login\" class=\"stack\">\
         <label for=\"token\">Admin or read-only token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"muted\">The token is checked once; the browser keeps only a session cookie.</p>\
         </main></body></html>",
    );
    h
}

/// A page saying what went wrong (no session, or the session may not do it).
pub fn message_page(title: &str, text: &str) -> String {
    let mut h = String::new();
    head(&mut h, title);
    let _ = write!(
        h,
        "<body class=\"login\"><main id=\"main\"><h1>{}</h1><p>{}</p>\
         <p><a href=\"/console/\">Back to the console</a></p></main></body></html>",
        E(title),
        E(text)
    );
    h
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(session: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        E(&session.csrf)
    )
}

/// A one-button form posting to `action` (with a confirmation prompt when `confirm`),
/// disabled in a read-only session.
pub fn action_button(
    session: &Session,
    action: &str,
    label: &str,
    class: &str,
    confirm: Option<&str>,
) -> String {
    let disabled = if session.role == Role::ReadOnly {
        " disabled"
    } else {
        ""
    };
    let confirm = confirm
        .map(|c| format!(" data-confirm=\"{}\"", E(c)))
        .unwrap_or_default();
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\"{confirm}>{}<button type=\"submit\" class=\"{}\"{disabled}>{}</button></form>",
        E(action),
        csrf_field(session),
        E(class),
        E(label)
    )
}

/// `disabled` in a read-only session, for whole forms' controls.
pub fn ro(session: &Session) -> &'static str {
    if session.role == Role::ReadOnly {
        " disabled"
    } else {
        ""
    }
}

/// One series of a chart.
pub struct Series<'a> {
    /// Legend name.
    pub name: &'a str,
    /// CSS class giving its colour (`s1`..`s4`).
    pub class: &'a str,
    /// One value per bucket.
    pub values: &'a [f64],
}

/// A stacked bar chart as inline SVG: one bar per bucket (labelled by `labels`), stacked
/// by series; a table of the same numbers follows for screen readers and copying.
pub fn bar_chart(id: &str, title: &str, labels: &[String], series: &[Series<'_>]) -> String {
    const W: f64 = 480.0;
    const H: f64 = 160.0;
    const PAD_L: f64 = 36.0;
    const PAD_B: f64 = 20.0;
    let n = labels.len().max(1);
    let totals: Vec<f64> = (0..n)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let bw = (W - PAD_L) / n as f64;
    let mut h = String::new();
    let _ = write!(
        h,
        "<figure class=\"chart\" id=\"{id}\"><figcaption>{t}</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"{id}-t\">\
         <title id=\"{id}-t\">{t}</title>\
         <line class=\"axis\" x1=\"{PAD_L}\" y1=\"{y0}\" x2=\"{W}\" y2=\"{y0}\"/>\
         <text class=\"tick\" x=\"2\" y=\"12\">{max}</text><text class=\"tick\" x=\"2\" y=\"{y0}\">0</text>",
        id = E(id),
        t = E(title),
        y0 = H - PAD_B,
        max = fmt_num(max),
    );
    let plot = H - PAD_B - 4.0;
    for i in 0..n {
        let x = PAD_L + i as f64 * bw + bw * 0.1;
        let mut y = H - PAD_B;
        for s in series {
            let v = s.values.get(i).copied().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let bh = (v / max * plot).max(1.0);
            y -= bh;
            let _ = write!(
                h,
                "<rect class=\"{c}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bh:.1}\"><title>{l}: {name} {v}</title></rect>",
                c = E(s.class),
                w = bw * 0.8,
                l = E(labels.get(i).map_or("", String::as_str)),
                name = E(s.name),
                v = fmt_num(v),
            );
        }
    }
    // A few labels along the bottom, not every one (they would overlap).
    let step = n.div_ceil(6).max(1);
    for i in (0..n).step_by(step) {
        let _ = write!(
            h,
            "<text class=\"tick\" x=\"{x:.1}\" y=\"{y}\">{l}</text>",
            x = PAD_L + i as f64 * bw,
            y = H - 4.0,
            l = E(labels.get(i).map_or("", String::as_str)),
        );
    }
    h.push_str("</svg><ul class=\"legend\">");
    for s in series {
        let total: f64 = s.values.iter().sum();
        let _ = write!(
            h,
            "<li><span class=\"swatch {}\"></span>{} ({})</li>",
            E(s.class),
            E(s.name),
            fmt_num(total)
        );
    }
    h.push_str("</ul></figure>");
    h
}

/// A number without a useless fraction.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

/// US dollars.
pub fn usd(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("${v:.6}")
    } else {
        format!("${v:.2}")
    }
}

/// A simple table: header cells (plain text) and rows of cells already rendered as HTML.
pub fn table(caption: &str, head: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut h = String::new();
    if rows.is_empty() {
        let _ = write!(
            h,
            "<p class=\"muted\"><strong>{}</strong>: {}</p>",
            E(caption),
            E(empty)
        );
        return h;
    }
    let _ = write!(
        h,
        "<div class=\"scroll\"><table><caption>{}</caption><thead><tr>",
        E(caption)
    );
    for c in head {
        let _ = write!(h, "<th scope=\"col\">{}</th>", E(c));
    }
    h.push_str("</tr></thead><tbody>");
    for r in rows {
        h.push_str("<tr>");
        for c in r {
            let _ = write!(h, "<td>{c}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table></div>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(esc("plain ü"), "plain ü");
        assert_eq!(esc(""), "");
    }

    #[test]
    fn charts_escape_labels_and_survive_empty_data() {
        let labels = vec!["<b>".to_owned()];
        let c = bar_chart(
            "c",
            "T",
            &labels,
            &[Series {
                name: "x\"",
                class: "s1",
                values: &[2.0],
            }],
        );
        assert!(!c.contains("<b>"));
        assert!(c.contains("&lt;b&gt;"));
        let empty = bar_chart("e", "E", &[], &[]);
        assert!(empty.contains("<svg"));
    }
}
