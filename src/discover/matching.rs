//! How a place holding a key is recognised by value: the field whose value is one of the user's
//! key ids, and beside it the one field that has the shape of a secret access key. Names are
//! whatever the owner chose; the target spec names them when they are not the defaults.
//!
//! Pure functions over names and values; values are only compared, never kept or printed.

use rekey_adapters::TargetKind;
use zeroize::Zeroize;

/// The field names an adapter looks for without `id-field`/`secret-field`.
const DEFAULT_ID: [&str; 2] = ["AWS_ACCESS_KEY_ID", "aws_access_key_id"];
const DEFAULT_SECRET: [&str; 2] = ["AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"];

/// A secret access key is 40 characters of base64: letters, digits, `/` and `+`.
pub fn is_secret_shape(value: &str) -> bool {
    let v = value.trim();
    v.len() == 40 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'+')
        // A key id is upper case and digits only; 40 of those is no secret.
        && v.bytes().any(|b| b.is_ascii_lowercase() || b == b'/' || b == b'+')
}

/// The key id a value is, if it is exactly one of `keys` (surrounding blanks and quotes aside).
pub fn key_in<'k>(value: &str, keys: &'k [String]) -> Option<&'k str> {
    let v = value.trim().trim_matches(|c| c == '"' || c == '\'');
    keys.iter().find(|k| k.as_str() == v).map(String::as_str)
}

/// Whether the bytes mention any of the keys anywhere (key ids are `[A-Z0-9]`, so a byte search
/// cannot miss one).
pub fn mentions(bytes: &[u8], keys: &[String]) -> Option<String> {
    keys.iter().find(|k| !k.is_empty() && bytes.windows(k.len()).any(|w| w == k.as_bytes())).cloned()
}

/// Where a key sits among named values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    pub id_field: String,
    pub key_id: String,
    /// `None` when no other field, or more than one, looks like the secret.
    pub secret_field: Option<String>,
    /// Why the secret field could not be told (the candidates), when it could not.
    pub problem: Option<String>,
}

impl Fields {
    /// The `?id-field=…&secret-field=…` a spec needs, empty when the names are the defaults.
    /// `None` when a name cannot be written in a spec.
    pub fn options(&self) -> Option<String> {
        let secret = self.secret_field.as_deref()?;
        let mut opts = Vec::new();
        if !DEFAULT_ID.contains(&self.id_field.as_str()) {
            opts.push(format!("id-field={}", self.id_field));
        }
        if !DEFAULT_SECRET.contains(&secret) {
            opts.push(format!("secret-field={secret}"));
        }
        if [self.id_field.as_str(), secret].iter().any(|n| n.is_empty() || n.contains(['&', '=', '?', '#'])) {
            return None;
        }
        Some(if opts.is_empty() { String::new() } else { format!("?{}", opts.join("&")) })
    }

    /// What the evidence line says about the fields, never their values.
    pub fn describe(&self, what: &str) -> String {
        match &self.secret_field {
            Some(s) => {
                format!("{what} {:?} holds {}; {what} {s:?} has the shape of its secret", self.id_field, self.key_id)
            }
            None => format!("{what} {:?} holds {}", self.id_field, self.key_id),
        }
    }
}

/// Finds the field holding one of `keys`, and its secret. `pairs` are (name, value); values are
/// only read.
pub fn find_fields<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>, keys: &[String]) -> Option<Fields> {
    let pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
    let (id_field, key_id) = pairs.iter().find_map(|(n, v)| key_in(v, keys).map(|k| (n.to_string(), k.to_string())))?;
    let candidates: Vec<&str> =
        pairs.iter().filter(|(n, v)| *n != id_field && is_secret_shape(v)).map(|(n, _)| *n).collect();
    let secret_field = pick_secret(&id_field, &candidates);
    let problem = match (&secret_field, candidates.len()) {
        (Some(_), _) => None,
        (None, 0) => Some("no field beside it has the shape of a secret access key".to_string()),
        (None, _) => Some(format!("several fields could be its secret ({})", candidates.join(", "))),
    };
    Some(Fields { id_field, key_id, secret_field: secret_field.map(str::to_string), problem })
}

/// The one candidate, or the one whose name says "secret", or the one named like the id field
/// (`SVC_KEY_ID` / `SVC_KEY_SECRET`): the longest shared prefix wins when it is unique.
fn pick_secret<'a>(id_field: &str, candidates: &[&'a str]) -> Option<&'a str> {
    match candidates {
        [] => return None,
        [one] => return Some(one),
        _ => {}
    }
    let named: Vec<&str> = candidates.iter().copied().filter(|c| c.to_ascii_lowercase().contains("secret")).collect();
    if let [one] = named.as_slice() {
        return Some(one);
    }
    let pool = if named.is_empty() { candidates.to_vec() } else { named };
    let shared = |c: &str| id_field.bytes().zip(c.bytes()).take_while(|(a, b)| a == b).count();
    let best = pool.iter().map(|c| shared(c)).max()?;
    let top: Vec<&str> = pool.iter().copied().filter(|c| shared(c) == best).collect();
    if let [one] = top.as_slice() { Some(one) } else { None }
}

/// Wipes every string in a parsed JSON value before it is dropped (it held a secret).
pub fn scrub(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => s.zeroize(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
        serde_json::Value::Object(o) => o.values_mut().for_each(scrub),
        _ => {}
    }
}

/// The order targets are given to `rotate`: stores first, then what reads them or is deployed
/// from them, then local files.
pub fn rank(kind: TargetKind) -> u8 {
    match kind {
        TargetKind::SecretsManager | TargetKind::Ssm => 0,
        TargetKind::Lambda => 1,
        TargetKind::Ecs => 2,
        TargetKind::Env | TargetKind::Profile => 3,
        TargetKind::Exec => 4,
    }
}

/// A spec quoted for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:@%+,=".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AKIAEXAMPLE000000001";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

    fn keys() -> Vec<String> {
        vec![ID.to_string()]
    }

    #[test]
    fn secret_shape_is_forty_base64_characters_not_a_key_id() {
        assert!(is_secret_shape(SECRET));
        assert!(!is_secret_shape(&"A".repeat(40)));
        assert!(!is_secret_shape("short"));
        assert!(!is_secret_shape(&format!("{SECRET}x")));
    }

    #[test]
    fn finds_unusual_names_and_writes_them_into_the_spec() {
        let pairs = [("region", "eu-west-1"), ("svc_login", ID), ("svc_pw", SECRET)];
        let f = find_fields(pairs, &keys()).unwrap();
        assert_eq!((f.id_field.as_str(), f.secret_field.as_deref()), ("svc_login", Some("svc_pw")));
        assert_eq!(f.options().unwrap(), "?id-field=svc_login&secret-field=svc_pw");
        assert!(!f.describe("field").contains(SECRET));
        let defaults = [("AWS_ACCESS_KEY_ID", ID), ("AWS_SECRET_ACCESS_KEY", SECRET)];
        assert_eq!(find_fields(defaults, &keys()).unwrap().options().unwrap(), "");
    }

    #[test]
    fn another_key_is_no_match_and_two_secrets_are_told_apart_by_name() {
        assert!(find_fields([("k", "AKIAOTHER00000000002"), ("s", SECRET)], &keys()).is_none());
        let other = "abcdefghijABCDEFGHIJ0123456789/+abcdefgh";
        let f = find_fields([("API_KEY_ID", ID), ("token", other), ("API_KEY_SECRET", SECRET)], &keys()).unwrap();
        assert_eq!(f.secret_field.as_deref(), Some("API_KEY_SECRET"));
        let f = find_fields([("id", ID), ("a", other), ("b", SECRET)], &keys()).unwrap();
        assert_eq!(f.secret_field, None);
        assert!(f.problem.as_deref().unwrap().contains("a, b"));
        assert_eq!(f.options(), None, "no spec without a secret field");
    }

    #[test]
    fn quoting_and_mentions() {
        assert_eq!(shell_quote("env:/srv/app/.env"), "env:/srv/app/.env");
        assert_eq!(shell_quote("profile:profile ops@/x"), "'profile:profile ops@/x'");
        assert_eq!(shell_quote("ssm:/a?secret-param=/b&x=y"), "'ssm:/a?secret-param=/b&x=y'");
        assert_eq!(mentions(format!("x={ID}\n").as_bytes(), &keys()).as_deref(), Some(ID));
        assert_eq!(mentions(b"nothing here", &keys()), None);
        assert_eq!(key_in(&format!(" \"{ID}\" "), &keys()), Some(ID));
    }
}
