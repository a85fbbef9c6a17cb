//! Reading IAM policy documents: decoding, the principals a trust policy allows, taking principals
//! out, and whether a document grants everything.

use std::collections::BTreeSet;

use serde_json::Value;

/// IAM returns policy documents URL-encoded; moto and CloudTrail give them as plain JSON.
pub fn decode_doc(s: &str) -> String {
    if s.trim_start().starts_with('{') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

pub(super) fn statements(doc: &Value) -> Vec<&Value> {
    match doc.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    }
}

pub(super) fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

/// `AWS:arn`, `Service:…`, `Federated:…` for every principal an Allow statement trusts; a bare
/// account id is the same principal as its `:root` ARN.
pub(super) fn principals(doc: &str) -> BTreeSet<String> {
    let Ok(v) = serde_json::from_str::<Value>(doc) else { return BTreeSet::new() };
    let mut out = BTreeSet::new();
    for s in statements(&v) {
        if s.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        match s.get("Principal") {
            Some(Value::String(p)) => {
                out.insert(format!("AWS:{p}"));
            }
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    for p in strings(Some(v)) {
                        out.insert(format!("{k}:{}", normal_principal(&p)));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

pub(super) fn normal_principal(p: &str) -> String {
    if p.len() == 12 && p.bytes().all(|b| b.is_ascii_digit()) {
        format!("arn:aws:iam::{p}:root")
    } else {
        p.to_string()
    }
}

/// The document without the given principals; `None` if no statement would be left.
pub(super) fn strip_principals(doc: &str, remove: &BTreeSet<String>) -> Option<String> {
    let mut v: Value = serde_json::from_str(doc).ok()?;
    let list = match v.get_mut("Statement")? {
        Value::Array(a) => std::mem::take(a),
        other => vec![other.take()],
    };
    let mut kept = Vec::new();
    for mut s in list {
        let Some(Value::Object(m)) = s.get_mut("Principal") else {
            kept.push(s);
            continue;
        };
        for (k, val) in m.iter_mut() {
            let left: Vec<Value> = strings(Some(val))
                .into_iter()
                .filter(|p| !remove.contains(&format!("{k}:{}", normal_principal(p))))
                .map(Value::String)
                .collect();
            *val = Value::Array(left);
        }
        m.retain(|_, val| val.as_array().is_some_and(|a| !a.is_empty()));
        if !m.is_empty() {
            kept.push(s);
        }
    }
    if kept.is_empty() {
        return None;
    }
    v["Statement"] = Value::Array(kept);
    Some(v.to_string())
}

pub(super) fn admin_name(name: &str) -> bool {
    matches!(name, "AdministratorAccess" | "IAMFullAccess" | "PowerUserAccess")
}

/// Allows `*` or `iam:*` on `*`.
pub(super) fn admin_doc(doc: &str) -> bool {
    let Ok(v) = serde_json::from_str::<Value>(doc) else { return false };
    statements(&v).iter().any(|s| {
        s.get("Effect").and_then(Value::as_str) == Some("Allow")
            && strings(s.get("Action")).iter().any(|a| a == "*" || a.eq_ignore_ascii_case("iam:*"))
            && strings(s.get("Resource")).iter().any(|r| r == "*")
    })
}

pub(super) fn same_doc(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_normalise_account_ids_and_strip_leaves_the_rest() {
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["999999999999","arn:aws:iam::123456789012:root"]},"Action":"sts:AssumeRole"}]}"#;
        let p = principals(doc);
        assert!(p.contains("AWS:arn:aws:iam::999999999999:root"), "{p:?}");
        let remove: BTreeSet<String> = ["AWS:arn:aws:iam::999999999999:root".to_string()].into();
        let stripped = strip_principals(doc, &remove).unwrap();
        assert_eq!(principals(&stripped), ["AWS:arn:aws:iam::123456789012:root".to_string()].into());
        let all: BTreeSet<String> = p.clone();
        assert!(strip_principals(doc, &all).is_none());
    }

    #[test]
    fn decodes_url_encoded_documents() {
        assert_eq!(decode_doc("%7B%22a%22%3A1%7D"), r#"{"a":1}"#);
        assert_eq!(decode_doc(r#"{"a":"%41"}"#), r#"{"a":"%41"}"#);
        assert_eq!(decode_doc("%4"), "%4");
    }

    #[test]
    fn admin_documents() {
        assert!(admin_doc(r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#));
        assert!(!admin_doc(r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#));
    }
}
