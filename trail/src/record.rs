//! CloudTrail records, read leniently and without copying.
//!
//! Real data is messy: trail files are `{"Records":[…]}`, exports are bare arrays or NDJSON, some
//! went through Logstash (`@timestamp` instead of `eventTime`), test corpora wrap records
//! (`{"log": {…}}`), anonymised samples carry invalid IPs and fake regions, fields are missing or of
//! another type than usual. Nothing here rejects a record for any of that: unknown fields are
//! ignored, a field of an unexpected type reads as absent, and only JSON that does not parse is
//! counted as malformed.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("JSON, but not CloudTrail records: {0}")]
    Shape(String),
}

/// A string field that reads as absent when it is missing, null, or not a string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lenient<'a>(pub Option<Cow<'a, str>>);

impl<'a> Lenient<'a> {
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref().filter(|s| !s.is_empty())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v))))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(V)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object field that reads as absent when it is not an object.
fn lenient_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let raw: Option<&'de RawValue> = Option::deserialize(d)?;
    Ok(raw.filter(|r| r.get().starts_with('{')).and_then(|r| serde_json::from_str(r.get()).ok()))
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserIdentity<'a> {
    #[serde(rename = "type", default, borrow)]
    pub kind: Lenient<'a>,
    #[serde(default, borrow)]
    pub arn: Lenient<'a>,
    #[serde(rename = "accessKeyId", default, borrow)]
    pub access_key_id: Lenient<'a>,
    #[serde(rename = "userName", default, borrow)]
    pub user_name: Lenient<'a>,
    #[serde(rename = "principalId", default, borrow)]
    pub principal_id: Lenient<'a>,
    #[serde(rename = "accountId", default, borrow)]
    pub account_id: Lenient<'a>,
    #[serde(rename = "invokedBy", default, borrow)]
    pub invoked_by: Lenient<'a>,
    #[serde(rename = "sessionContext", default, borrow)]
    pub session_context: Option<&'a RawValue>,
}

/// A CloudTrail record, borrowing from the file's bytes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Record<'a> {
    #[serde(rename = "eventTime", default, borrow)]
    event_time: Lenient<'a>,
    /// Logstash's name for the time of the event.
    #[serde(rename = "@timestamp", default, borrow)]
    timestamp: Lenient<'a>,
    #[serde(rename = "eventName", default, borrow)]
    pub event_name: Lenient<'a>,
    #[serde(rename = "eventSource", default, borrow)]
    pub event_source: Lenient<'a>,
    #[serde(rename = "awsRegion", default, borrow)]
    pub aws_region: Lenient<'a>,
    #[serde(rename = "sourceIPAddress", default, borrow)]
    pub source_ip: Lenient<'a>,
    #[serde(rename = "userAgent", default, borrow)]
    pub user_agent: Lenient<'a>,
    #[serde(rename = "errorCode", default, borrow)]
    pub error_code: Lenient<'a>,
    #[serde(rename = "errorMessage", default, borrow)]
    pub error_message: Lenient<'a>,
    #[serde(rename = "eventID", default, borrow)]
    pub event_id: Lenient<'a>,
    #[serde(rename = "eventType", default, borrow)]
    pub event_type: Lenient<'a>,
    #[serde(rename = "recipientAccountId", default, borrow)]
    pub recipient_account: Lenient<'a>,
    #[serde(rename = "userIdentity", default, borrow, deserialize_with = "lenient_object")]
    pub user_identity: Option<UserIdentity<'a>>,
    #[serde(rename = "requestParameters", default, borrow)]
    pub request_parameters: Option<&'a RawValue>,
    #[serde(rename = "responseElements", default, borrow)]
    pub response_elements: Option<&'a RawValue>,
    /// A test corpus's wrapper around the record.
    #[serde(default, borrow)]
    log: Option<&'a RawValue>,
    /// The record's own JSON (inside any wrapper).
    #[serde(skip)]
    raw: Option<&'a RawValue>,
}

/// What a minting event handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub key: String,
    /// The role session, federated user or user the key acts as.
    pub principal: Option<String>,
}

#[derive(Deserialize)]
struct MintResponse<'a> {
    #[serde(default, borrow, deserialize_with = "lenient_object")]
    credentials: Option<KeyField<'a>>,
    #[serde(rename = "accessKey", default, borrow, deserialize_with = "lenient_object")]
    access_key: Option<KeyField<'a>>,
    #[serde(rename = "assumedRoleUser", default, borrow, deserialize_with = "lenient_object")]
    assumed_role_user: Option<ArnField<'a>>,
    #[serde(rename = "federatedUser", default, borrow, deserialize_with = "lenient_object")]
    federated_user: Option<ArnField<'a>>,
}

#[derive(Deserialize)]
struct KeyField<'a> {
    #[serde(rename = "accessKeyId", default, borrow)]
    access_key_id: Lenient<'a>,
    #[serde(rename = "userName", default, borrow)]
    user_name: Lenient<'a>,
}

#[derive(Deserialize)]
struct ArnField<'a> {
    #[serde(default, borrow)]
    arn: Lenient<'a>,
}

impl<'a> Record<'a> {
    /// Parse one record; a wrapped record (`{"log": {…}}`) is unwrapped.
    pub fn parse(raw: &'a RawValue) -> Result<Record<'a>, RecordError> {
        let mut record: Record<'a> =
            serde_json::from_str(raw.get()).map_err(|e| RecordError::NotJson(e.to_string()))?;
        match record.log {
            Some(inner) if record.event_name.get().is_none() && inner.get().starts_with('{') => Record::parse(inner),
            _ => {
                record.raw = Some(raw);
                Ok(record)
            }
        }
    }

    /// The record's JSON exactly as it is in the file (inside any wrapper).
    pub fn raw(&self) -> &'a str {
        self.raw.map(RawValue::get).unwrap_or("{}")
    }

    pub fn time(&self) -> Option<&str> {
        self.event_time.get().or_else(|| self.timestamp.get())
    }

    /// The key that signed the request, if any.
    pub fn access_key_id(&self) -> Option<&str> {
        self.user_identity.as_ref().and_then(|u| u.access_key_id.get())
    }

    pub fn identity_type(&self) -> Option<&str> {
        self.user_identity.as_ref().and_then(|u| u.kind.get())
    }

    pub fn arn(&self) -> Option<&str> {
        self.user_identity.as_ref().and_then(|u| u.arn.get())
    }

    pub fn failed(&self) -> bool {
        self.error_code.get().is_some()
    }

    /// The key this record's call minted: STS credentials (`AssumeRole*`, `GetSessionToken`,
    /// `GetFederationToken`) or a long-term key (`CreateAccessKey`). Failed calls mint nothing.
    pub fn minted(&self) -> Option<Minted> {
        if self.failed() {
            return None;
        }
        let name = self.event_name.get()?;
        let minting = name.starts_with("AssumeRole")
            || matches!(name, "GetSessionToken" | "GetFederationToken" | "CreateAccessKey");
        if !minting {
            return None;
        }
        let resp: MintResponse = serde_json::from_str(self.response_elements?.get()).ok()?;
        let (field, principal) = match (resp.credentials, resp.access_key) {
            (Some(c), _) => {
                let principal = resp
                    .assumed_role_user
                    .and_then(|a| a.arn.get().map(str::to_string))
                    .or_else(|| resp.federated_user.and_then(|f| f.arn.get().map(str::to_string)));
                (c, principal)
            }
            (None, Some(k)) => {
                let principal = k.user_name.get().map(str::to_string);
                (k, principal)
            }
            (None, None) => return None,
        };
        let key = field.access_key_id.get()?.to_string();
        Some(Minted { key, principal })
    }
}

/// The records of one decompressed file, whatever its shape.
pub struct Records<'a> {
    pub records: Vec<&'a RawValue>,
    /// Lines of an NDJSON file that are not JSON.
    pub malformed: u64,
}

/// Calls a function on each element of a JSON array, keeping none of them.
struct EachSeed<'f, F>(&'f mut F);

impl<'de, F: FnMut(&'de RawValue)> de::DeserializeSeed<'de> for EachSeed<'_, F> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(&'de RawValue)> Visitor<'de> for EachSeed<'_, F> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            (self.0)(raw);
        }
        Ok(())
    }
}

/// `{"Records":[…], …}`: calls the function on each record; says whether there was a `Records`.
struct EnvelopeVisitor<'f, F>(&'f mut F);

impl<'de, F: FnMut(&'de RawValue)> Visitor<'de> for EnvelopeVisitor<'_, F> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut records = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "Records" {
                map.next_value_seed(EachSeed(&mut *self.0))?;
                records = true;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(records)
    }
}

impl<'a> Records<'a> {
    /// Split a file into records: `{"Records":[…]}`, a bare array, NDJSON, or a single record.
    pub fn split(data: &'a [u8]) -> Result<Records<'a>, RecordError> {
        let mut records = Vec::new();
        let malformed = Self::each(data, |r| records.push(r))?;
        Ok(Records { records, malformed })
    }

    /// Call `f` on each record of a file, whatever its shape, without keeping them all: a file
    /// of tiny records would otherwise cost many times its size. Returns how many NDJSON lines
    /// were not JSON. On an error, `f` may already have been called on the records before it.
    pub fn each(data: &'a [u8], mut f: impl FnMut(&'a RawValue)) -> Result<u64, RecordError> {
        let text = std::str::from_utf8(data).map_err(|e| RecordError::NotJson(format!("not UTF-8 ({e})")))?;
        let text = text.trim_start_matches('\u{feff}').trim_start();
        match text.as_bytes().first() {
            None => Ok(0),
            Some(b'[') => {
                let mut de = serde_json::Deserializer::from_str(text);
                de::DeserializeSeed::deserialize(EachSeed(&mut f), &mut de)
                    .and_then(|()| de.end())
                    .map_err(|e| RecordError::NotJson(e.to_string()))?;
                Ok(0)
            }
            Some(b'{') => {
                let mut seen = 0usize;
                let mut counting = |r| {
                    seen += 1;
                    f(r)
                };
                let mut de = serde_json::Deserializer::from_str(text);
                let envelope = de.deserialize_map(EnvelopeVisitor(&mut counting)).and_then(|r| de.end().map(|()| r));
                match envelope {
                    Ok(true) => Ok(0),
                    // Records were handed out before the envelope turned out broken.
                    Err(e) if seen > 0 => Err(RecordError::NotJson(e.to_string())),
                    // One object that is not an envelope, or several on separate lines.
                    _ => Ok(Self::lines(text, &mut f)),
                }
            }
            Some(_) => Err(RecordError::Shape("does not start with '{' or '['".into())),
        }
    }

    fn lines(text: &'a str, f: &mut impl FnMut(&'a RawValue)) -> u64 {
        let mut malformed = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            match serde_json::from_str::<&RawValue>(line) {
                Ok(raw) => f(raw),
                Err(_) => malformed += 1,
            }
        }
        malformed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_shape() {
        let rec = r#"{"eventTime":"2026-01-01T00:00:00Z","eventName":"GetCallerIdentity","userIdentity":{"accessKeyId":"AKIAX"}}"#;
        for text in [
            format!(r#"{{"Records":[{rec},{rec}]}}"#),
            format!("[{rec},\n {rec}]"),
            format!("{rec}\n{rec}\n"),
            format!("\u{feff}  {rec}\n\n{rec}"),
        ] {
            let r = Records::split(text.as_bytes()).unwrap();
            assert_eq!(r.records.len(), 2, "{text}");
            let parsed = Record::parse(r.records[0]).unwrap();
            assert_eq!(parsed.access_key_id(), Some("AKIAX"));
            assert_eq!(parsed.time(), Some("2026-01-01T00:00:00Z"));
        }
    }

    #[test]
    fn odd_fields_read_as_absent_and_bad_lines_are_counted() {
        let text = "{\"eventName\":7,\"userIdentity\":\"root\",\"@timestamp\":\"2020-09-14T00:44:23.000Z\",\"sourceIPAddress\":\"211.9.016.253\"}\nnot json\n";
        let r = Records::split(text.as_bytes()).unwrap();
        assert_eq!((r.records.len(), r.malformed), (1, 1));
        let rec = Record::parse(r.records[0]).unwrap();
        assert_eq!(rec.event_name.get(), None);
        assert!(rec.user_identity.is_none());
        assert_eq!(rec.time(), Some("2020-09-14T00:44:23.000Z"));
        assert_eq!(rec.source_ip.get(), Some("211.9.016.253"));
    }

    #[test]
    fn unwraps_test_corpus_records() {
        let text = r#"{"rule":"x","log":{"eventName":"CreateUser","userIdentity":{"accessKeyId":"AKIAY"}}}"#;
        let r = Records::split(text.as_bytes()).unwrap();
        let rec = Record::parse(r.records[0]).unwrap();
        assert_eq!((rec.event_name.get(), rec.access_key_id()), (Some("CreateUser"), Some("AKIAY")));
    }

    #[test]
    fn finds_minted_keys() {
        let assume = r#"{"eventName":"AssumeRole","responseElements":{"credentials":{"accessKeyId":"ASIAZ","sessionToken":"t"},"assumedRoleUser":{"arn":"arn:aws:sts::1:assumed-role/r/s"}}}"#;
        let raw: &RawValue = serde_json::from_str(assume).unwrap();
        let m = Record::parse(raw).unwrap().minted().unwrap();
        assert_eq!(m, Minted { key: "ASIAZ".into(), principal: Some("arn:aws:sts::1:assumed-role/r/s".into()) });
        let create = r#"{"eventName":"CreateAccessKey","responseElements":{"accessKey":{"accessKeyId":"AKIAB","userName":"backdoor","status":"Active"}}}"#;
        let raw: &RawValue = serde_json::from_str(create).unwrap();
        assert_eq!(Record::parse(raw).unwrap().minted().unwrap().principal.as_deref(), Some("backdoor"));
        let failed = r#"{"eventName":"AssumeRole","errorCode":"AccessDenied","responseElements":null}"#;
        let raw: &RawValue = serde_json::from_str(failed).unwrap();
        assert_eq!(Record::parse(raw).unwrap().minted(), None);
    }

    #[test]
    fn an_envelope_broken_after_its_records_is_an_error() {
        let rec = r#"{"eventName":"ListUsers"}"#;
        assert!(Records::split(format!(r#"{{"Records":[{rec},{rec}]}} trailing"#).as_bytes()).is_err());
        assert!(Records::split(format!(r#"{{"Records":[{rec},{rec}"#).as_bytes()).is_err());
        // An object whose Records is not an array is one record, as is any other object.
        let r = Records::split(br#"{"Records":null,"eventName":"x"}"#).unwrap();
        assert_eq!(r.records.len(), 1);
        let r = Records::split(br#"{"Records":[],"eventName":"x"}"#).unwrap();
        assert_eq!(r.records.len(), 0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Records::split(b"\x00\x01binary").is_err());
        assert!(Records::split(b"[{\"a\":").is_err());
        assert!(Records::split(&[0xff, 0xfe]).is_err());
    }
}
