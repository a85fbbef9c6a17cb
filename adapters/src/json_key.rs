//! A key kept as a JSON object in a store (a Secrets Manager secret, an SSM parameter): finding its
//! two fields and writing a new key into them. The stores differ in how they version and label a
//! value; what a key inside a value looks like, and what a user is told when it is not there, is
//! the same for both and lives here once.

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::ErrorKind;
use crate::NewKey;

/// The value, parsed, with the fields a rotation rewrites.
pub(crate) struct KeyObject {
    pub(crate) object: Map<String, Value>,
    /// Written with newlines: the new value is written the same way, for people who read it.
    pub(crate) pretty: bool,
    pub(crate) id_field: String,
    pub(crate) secret_field: String,
    /// The key id it holds; None when the field is empty.
    pub(crate) key_id: Option<String>,
}

impl KeyObject {
    /// Parse `text`, the value of `place` (`secret NAME`, `parameter NAME`), and find the first of
    /// `id_fields` and of `secret_fields` in it. `other_layout` ends the message for a value that
    /// is not an object: the store's other way of keeping a key, or nothing.
    pub(crate) fn parse(
        text: &str,
        place: &str,
        id_fields: &[String],
        secret_fields: &[String],
        other_layout: &str,
    ) -> Result<KeyObject, ErrorKind> {
        // serde_json's messages quote no input, so the error cannot carry the secret.
        let Ok(Value::Object(object)) = serde_json::from_str::<Value>(text) else {
            return Err(ErrorKind::Unusable(format!(
                "{place} is not a JSON object; store the key as {{\"{}\": \"AKIA...\", \"{}\": \"...\"}}{other_layout}",
                id_fields[0], secret_fields[0]
            )));
        };
        let id_field = string_field(&object, id_fields, place, "key id", "id-field")?;
        let secret_field = string_field(&object, secret_fields, place, "secret key", "secret-field")?;
        let key_id = object.get(&id_field).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        Ok(KeyObject { object, pretty: text.contains('\n'), id_field, secret_field, key_id })
    }

    /// The value with `key` in `id_field` and `secret_field` (those a snapshot recorded), every other
    /// field as it was, written as the snapshot's value was (`pretty`).
    pub(crate) fn with_key(
        mut self,
        id_field: &str,
        secret_field: &str,
        key: &NewKey,
        pretty: bool,
    ) -> Result<Zeroizing<String>, ErrorKind> {
        self.object.insert(id_field.to_string(), Value::String(key.access_key_id.clone()));
        self.object.insert(secret_field.to_string(), Value::String(key.secret().to_string()));
        let value = Value::Object(std::mem::take(&mut self.object));
        let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
        // The object held the new secret: its strings are not zeroized, but the text sent is.
        text.map(Zeroizing::new).map_err(|e| ErrorKind::Backend(format!("cannot encode the new value: {e}")))
    }
}

/// The first of `names` present in `object`, holding a string.
fn string_field(
    object: &Map<String, Value>,
    names: &[String],
    place: &str,
    what: &str,
    option: &str,
) -> Result<String, ErrorKind> {
    let Some(name) = names.iter().find(|n| object.contains_key(n.as_str())) else {
        return Err(ErrorKind::Unusable(format!(
            "{place} has no {what} field (looked for {}); add it, or name the field with ?{option}=NAME",
            names.join(", ")
        )));
    };
    if !object.get(name).is_some_and(Value::is_string) {
        return Err(ErrorKind::Unusable(format!(
            "field {name} of {place} is not a string; store the {what} as a JSON string"
        )));
    }
    Ok(name.clone())
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn parse(text: &str) -> Result<KeyObject, ErrorKind> {
        KeyObject::parse(text, "secret app", &names(&["id", "AWS_ACCESS_KEY_ID"]), &names(&["secret"]), "")
    }

    fn message(r: Result<KeyObject, ErrorKind>) -> String {
        match r {
            Err(ErrorKind::Unusable(m)) => m,
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("parsed"),
        }
    }

    #[test]
    fn finds_the_first_named_field_and_keeps_the_layout() {
        let k = parse("{\n  \"AWS_ACCESS_KEY_ID\": \"AKIAOLD\",\n  \"secret\": \"old\",\n  \"db\": 1\n}").unwrap();
        assert_eq!(
            (k.id_field.as_str(), k.secret_field.as_str(), k.key_id.as_deref()),
            ("AWS_ACCESS_KEY_ID", "secret", Some("AKIAOLD"))
        );
        assert!(k.pretty);
        let key = NewKey::new("AKIANEW", SecretString::from("new-secret".to_string()));
        let text = k.with_key("AWS_ACCESS_KEY_ID", "secret", &key, true).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, serde_json::json!({"AWS_ACCESS_KEY_ID": "AKIANEW", "secret": "new-secret", "db": 1}));
        assert!(text.contains('\n'));
        assert_eq!(parse(r#"{"id":"","secret":"s"}"#).unwrap().key_id, None, "an empty id is no key");
    }

    #[test]
    fn says_what_is_wrong_and_how_to_fix_it_without_the_secret() {
        let m = message(parse(r#"{"id":"AKIA","secret":"hunter2""#));
        assert!(m.starts_with("secret app is not a JSON object; store the key as {\"id\""), "{m}");
        assert!(!m.contains("hunter2"), "{m}");
        let m = message(parse(r#"{"secret":"s"}"#));
        assert_eq!(
            m,
            "secret app has no key id field (looked for id, AWS_ACCESS_KEY_ID); add it, or name the field with ?id-field=NAME"
        );
        let m = message(parse(r#"{"id":"AKIA","secret":7}"#));
        assert_eq!(m, "field secret of secret app is not a string; store the secret key as a JSON string");
        assert!(message(parse("[1]")).contains("is not a JSON object"));
    }
}
