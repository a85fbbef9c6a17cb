//! `report.html`: one self-contained page (inline CSS and JS, no external assets). The data is
//! embedded as JSON with every `<` escaped and the script renders it with `textContent` only.

use std::io;
use std::path::Path;

use super::{Plan, Report, contain_command, priority, severity_word};

const HTML_TEMPLATE: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

fn html_escape(s: &str) -> String {
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

/// JSON that is safe inside `<script type="application/json">`: no `<` at all (so neither `</script`
/// nor `<!--` can occur), and `>`/`&` escaped too for good measure. Only strings can hold them, and
/// `\u003c` is the same string to `JSON.parse`.
fn script_json(v: &serde_json::Value) -> io::Result<String> {
    let s = serde_json::to_string(v).map_err(io::Error::other)?;
    Ok(s.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026"))
}

/// Writes `report.html`.
pub fn html(r: &Report, plan: &Plan, plan_path: &Path) -> io::Result<String> {
    let data = serde_json::json!({
        "report": r,
        "plan": plan,
        "priority": priority(r),
        "command": contain_command(plan_path),
    });
    let title = format!("{} {} · rekey incident {}", priority(r), severity_word(r.severity), r.access_key_id);
    Ok(HTML_TEMPLATE
        .replace("{{TITLE}}", &html_escape(&title))
        .replace("{{CSS}}", CSS)
        .replace("{{JS}}", JS)
        .replace("{{DATA}}", &script_json(&data)?))
}
