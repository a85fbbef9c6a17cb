//! Athena: the same search as SQL over the trail bucket, for trails too big for one machine.
//!
//! This module only writes text (the table DDL and one query per hop of the key chain) and reads
//! result rows back into CloudTrail records, so that [`crate::Record`] finds minted keys exactly as
//! the local engine does. The client that runs the queries lives in the rekey crate.
//!
//! # Cost model
//!
//! Athena bills **$5 per TB scanned** (us-east-1 list price), counted on the gzipped objects, rounded
//! up to the MB with a 10 MB minimum per query; DDL and failed queries are free. Partition projection
//! on account, region and delivery date limits a query to the objects of the window, so every hop
//! scans the whole window once, whatever the number of keys in it:
//!
//! cost ≈ hops × (gzipped bytes delivered in the window) × $5/TB
//!
//! For example 1M events/day is about 1.3 GB/day of JSON, about 170 MB/day gzipped: a 30-day window
//! is about 5 GB, $0.025 a hop. The local scan costs nothing in Athena but reads every object of the
//! window over the network once (S3 GET requests, and egress when run outside the region) and is
//! bound by the machine's bandwidth and cores (about 1.2 GB/s of JSON on 2 cores).

use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::DELIVERY_MARGIN;

/// Athena's list price in us-east-1, in USD per TB scanned.
pub const PRICE_PER_TB_USD: f64 = 5.0;
/// Athena bills at least this much per query that scans data.
pub const MIN_BILLED_BYTES: u64 = 10 << 20;

/// The estimated price of one query that scanned `bytes`.
pub fn estimated_cost_usd(bytes: u64) -> f64 {
    if bytes == 0 {
        return 0.0;
    }
    let billed = bytes.div_ceil(1 << 20).saturating_mul(1 << 20).max(MIN_BILLED_BYTES);
    billed as f64 / 1e12 * PRICE_PER_TB_USD
}

/// The column holding the S3 object a row came from; not part of the record.
pub const SOURCE_COLUMN: &str = "log_object";

/// Where the trail is and what the table over it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub database: String,
    pub table: String,
    pub bucket: String,
    /// The key prefix up to and excluding `AWSLogs/` (`""` when the trail writes at the bucket root).
    pub prefix: String,
    /// Accounts whose logs the bucket holds (the projection cannot discover them).
    pub accounts: Vec<String>,
    /// Set for an organization trail, whose objects are under `AWSLogs/<org-id>/<account>/`.
    pub org_id: Option<String>,
    pub regions: Vec<String>,
    /// First day of the projected date range.
    pub start_date: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("not an access key id: {0} (expected 16 to 128 characters A-Z, 0-9)")]
    BadKey(String),
    #[error("no access key to look for")]
    NoKeys,
    #[error("invalid {what}: {value}")]
    BadName { what: &'static str, value: String },
}

/// A value shown in an error, escaped and cut short: it may be hostile or huge.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let more = if cut.len() < s.len() { "…" } else { "" };
    format!("{cut:?}{more}")
}

/// Key ids are the only values in the queries that come from the logs, so they are checked against
/// the access key alphabet before they are quoted; anything else is refused, never escaped.
pub fn validate_key(key: &str) -> Result<&str, SqlError> {
    let ok = (16..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if ok { Ok(key) } else { Err(SqlError::BadKey(shown(key))) }
}

fn check(what: &'static str, value: &str, ok: bool) -> Result<(), SqlError> {
    if ok { Ok(()) } else { Err(SqlError::BadName { what, value: shown(value) }) }
}

fn all_bytes(s: &str, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.bytes().all(allowed)
}

/// Athena database and table names: lowercase letters, digits, underscores.
pub fn validate_identifier(what: &'static str, name: &str) -> Result<(), SqlError> {
    check(
        what,
        name,
        name.len() <= 255 && all_bytes(name, |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
    )
}

/// `yyyy-MM-dd`, the prefix of an RFC 3339 UTC time.
fn day(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_string()
}

/// The partition value of the day `t` falls in (`yyyy/MM/dd`, the trail's folder layout).
fn partition_day(t: SystemTime) -> String {
    day(t).replace('-', "/")
}

fn location(spec: &TableSpec) -> String {
    let prefix = spec.prefix.trim_matches('/');
    let mut loc = format!("s3://{}/", spec.bucket);
    if !prefix.is_empty() {
        loc.push_str(prefix);
        loc.push('/');
    }
    loc.push_str("AWSLogs/");
    if let Some(org) = &spec.org_id {
        loc.push_str(org);
        loc.push('/');
    }
    loc
}

fn validate_spec(spec: &TableSpec) -> Result<(), SqlError> {
    validate_identifier("database name", &spec.database)?;
    validate_identifier("table name", &spec.table)?;
    let b = &spec.bucket;
    check(
        "bucket name",
        b,
        (3..=63).contains(&b.len())
            && all_bytes(b, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'),
    )?;
    // The prefix lands inside quoted strings and a `${…}` template: no quotes, `$`, braces, spaces.
    let p = spec.prefix.trim_matches('/');
    check(
        "prefix",
        &spec.prefix,
        p.is_empty() || all_bytes(p, |c| c.is_ascii_alphanumeric() || b"/!-_.*()=".contains(&c)),
    )?;
    check("account list", "(empty)", !spec.accounts.is_empty())?;
    for a in &spec.accounts {
        check("account id", a, a.len() == 12 && all_bytes(a, |c| c.is_ascii_digit()))?;
    }
    check("region list", "(empty)", !spec.regions.is_empty())?;
    for r in &spec.regions {
        check(
            "region",
            r,
            r.len() <= 32 && all_bytes(r, |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
        )?;
    }
    if let Some(org) = &spec.org_id {
        check(
            "organization id",
            org,
            org.starts_with("o-")
                && org.len() <= 34
                && all_bytes(&org[2..], |c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        )?;
    }
    Ok(())
}

/// The columns of the AWS-documented CloudTrail table (Athena user guide, "Create the table for
/// CloudTrail logs in Athena using partition projection").
const COLUMNS: &str = "\
    eventversion STRING,
    useridentity STRUCT<
        type: STRING,
        principalid: STRING,
        arn: STRING,
        accountid: STRING,
        invokedby: STRING,
        accesskeyid: STRING,
        username: STRING,
        onbehalfof: STRUCT<
            userid: STRING,
            identitystorearn: STRING>,
        sessioncontext: STRUCT<
            attributes: STRUCT<
                mfaauthenticated: STRING,
                creationdate: STRING>,
            sessionissuer: STRUCT<
                type: STRING,
                principalid: STRING,
                arn: STRING,
                accountid: STRING,
                username: STRING>,
            ec2roledelivery: STRING,
            webidfederationdata: STRUCT<
                federatedprovider: STRING,
                attributes: MAP<STRING,STRING>>
        >
    >,
    eventtime STRING,
    eventsource STRING,
    eventname STRING,
    awsregion STRING,
    sourceipaddress STRING,
    useragent STRING,
    errorcode STRING,
    errormessage STRING,
    requestparameters STRING,
    responseelements STRING,
    additionaleventdata STRING,
    requestid STRING,
    eventid STRING,
    readonly STRING,
    resources ARRAY<STRUCT<
        arn: STRING,
        accountid: STRING,
        type: STRING>>,
    eventtype STRING,
    apiversion STRING,
    recipientaccountid STRING,
    serviceeventdetails STRING,
    sharedeventid STRING,
    vpcendpointid STRING,
    vpcendpointaccountid STRING,
    eventcategory STRING,
    addendum STRUCT<
        reason: STRING,
        updatedfields: STRING,
        originalrequestid: STRING,
        originaleventid: STRING>,
    sessioncredentialfromconsole STRING,
    edgedevicedetails STRING,
    tlsdetails STRUCT<
        tlsversion: STRING,
        ciphersuite: STRING,
        clientprovidedhostheader: STRING>";

/// The CloudTrail table over the trail bucket, with partition projection on account, region and
/// delivery day, so that neither a crawler nor `ALTER TABLE ADD PARTITION` is ever needed and a query
/// reads only the days it asks for. `IF NOT EXISTS` makes it safe to run before every search.
pub fn create_table_ddl(spec: &TableSpec) -> Result<String, SqlError> {
    validate_spec(spec)?;
    let loc = location(spec);
    Ok(format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS `{db}`.`{table}` (
{COLUMNS}
)
PARTITIONED BY (`account` STRING, `region` STRING, `timestamp` STRING)
ROW FORMAT SERDE 'org.apache.hive.serde2.JsonSerDe'
STORED AS INPUTFORMAT 'com.amazon.emr.cloudtrail.CloudTrailInputFormat'
OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'
LOCATION '{loc}'
TBLPROPERTIES (
    'projection.enabled'='true',
    'projection.account.type'='enum',
    'projection.account.values'='{accounts}',
    'projection.region.type'='enum',
    'projection.region.values'='{regions}',
    'projection.timestamp.type'='date',
    'projection.timestamp.format'='yyyy/MM/dd',
    'projection.timestamp.interval'='1',
    'projection.timestamp.interval.unit'='DAYS',
    'projection.timestamp.range'='{start},NOW',
    'storage.location.template'='{loc}${{account}}/CloudTrail/${{region}}/${{timestamp}}'
)",
        db = spec.database,
        table = spec.table,
        accounts = spec.accounts.join(","),
        regions = spec.regions.join(","),
        start = partition_day(spec.start_date),
    ))
}

/// What a hop selects: enough to rebuild each record for [`crate::Record`]. Struct columns come
/// back as JSON text, not as Athena's `{key=value}` rendering, which cannot be parsed reliably.
const SELECT: &str = "SELECT
    eventversion,
    json_format(CAST(useridentity AS JSON)) AS useridentity,
    eventtime,
    eventsource,
    eventname,
    awsregion,
    sourceipaddress,
    useragent,
    errorcode,
    errormessage,
    requestparameters,
    responseelements,
    additionaleventdata,
    requestid,
    eventid,
    readonly,
    json_format(CAST(resources AS JSON)) AS resources,
    eventtype,
    apiversion,
    recipientaccountid,
    sharedeventid,
    vpcendpointid,
    eventcategory,
    json_format(CAST(tlsdetails AS JSON)) AS tlsdetails,
    \"$path\" AS log_object";

/// One hop of the key chain: every record signed by one of `keys` within the window.
///
/// The `timestamp` partition is the delivery day: a record is delivered after its call, up to
/// [`DELIVERY_MARGIN`] later, so the partition range runs from the day of `since` to the day of
/// `until + DELIVERY_MARGIN` (the local engine skips files the same way), and `eventtime` then keeps
/// only the window itself. Without `since` the scan starts at the table's projection start.
pub fn hop_query(
    table: &str,
    keys: &[String],
    since: Option<SystemTime>,
    until: Option<SystemTime>,
) -> Result<String, SqlError> {
    validate_identifier("table name", table)?;
    if keys.is_empty() {
        return Err(SqlError::NoKeys);
    }
    let quoted: Vec<String> =
        keys.iter().map(|k| validate_key(k).map(|k| format!("'{k}'"))).collect::<Result<_, _>>()?;
    let mut sql = format!("{SELECT}\nFROM \"{table}\"\nWHERE useridentity.accesskeyid IN ({})", quoted.join(", "));
    // Times are formatted here, never taken from the caller as text.
    if let Some(s) = since {
        sql.push_str(&format!("\n  AND \"timestamp\" >= '{}'", partition_day(s)));
    }
    if let Some(u) = until {
        sql.push_str(&format!("\n  AND \"timestamp\" <= '{}'", partition_day(u + DELIVERY_MARGIN)));
    }
    // `eventtime` is `yyyy-MM-ddTHH:mm:ssZ`, so string order is time order.
    if let Some(s) = since {
        sql.push_str(&format!("\n  AND eventtime >= '{}'", humantime::format_rfc3339_seconds(s)));
    }
    if let Some(u) = until {
        sql.push_str(&format!("\n  AND eventtime <= '{}'", humantime::format_rfc3339_seconds(u)));
    }
    sql.push_str("\nORDER BY eventtime, eventid");
    Ok(sql)
}

/// Table columns (lowercase in Hive) and struct fields, by their name in a CloudTrail record.
const NAMES: &[(&str, &str)] = &[
    ("eventversion", "eventVersion"),
    ("useridentity", "userIdentity"),
    ("eventtime", "eventTime"),
    ("eventsource", "eventSource"),
    ("eventname", "eventName"),
    ("awsregion", "awsRegion"),
    ("sourceipaddress", "sourceIPAddress"),
    ("useragent", "userAgent"),
    ("errorcode", "errorCode"),
    ("errormessage", "errorMessage"),
    ("requestparameters", "requestParameters"),
    ("responseelements", "responseElements"),
    ("additionaleventdata", "additionalEventData"),
    ("requestid", "requestID"),
    ("eventid", "eventID"),
    ("readonly", "readOnly"),
    ("eventtype", "eventType"),
    ("apiversion", "apiVersion"),
    ("recipientaccountid", "recipientAccountId"),
    ("serviceeventdetails", "serviceEventDetails"),
    ("sharedeventid", "sharedEventID"),
    ("vpcendpointid", "vpcEndpointId"),
    ("vpcendpointaccountid", "vpcEndpointAccountId"),
    ("eventcategory", "eventCategory"),
    ("sessioncredentialfromconsole", "sessionCredentialFromConsole"),
    ("edgedevicedetails", "edgeDeviceDetails"),
    ("tlsdetails", "tlsDetails"),
    ("principalid", "principalId"),
    ("accountid", "accountId"),
    ("invokedby", "invokedBy"),
    ("accesskeyid", "accessKeyId"),
    ("username", "userName"),
    ("onbehalfof", "onBehalfOf"),
    ("userid", "userId"),
    ("identitystorearn", "identityStoreArn"),
    ("sessioncontext", "sessionContext"),
    ("mfaauthenticated", "mfaAuthenticated"),
    ("creationdate", "creationDate"),
    ("sessionissuer", "sessionIssuer"),
    ("ec2roledelivery", "ec2RoleDelivery"),
    ("webidfederationdata", "webIdFederationData"),
    ("federatedprovider", "federatedProvider"),
    ("updatedfields", "updatedFields"),
    ("originalrequestid", "originalRequestID"),
    ("originaleventid", "originalEventID"),
    ("tlsversion", "tlsVersion"),
    ("ciphersuite", "cipherSuite"),
    ("clientprovidedhostheader", "clientProvidedHostHeader"),
];

/// The `useridentity` struct's fields in declaration order: Athena engine v2 casts a struct to a
/// JSON array without names.
const USERIDENTITY_FIELDS: &[&str] = &[
    "type",
    "principalid",
    "arn",
    "accountid",
    "invokedby",
    "accesskeyid",
    "username",
    "onbehalfof",
    "sessioncontext",
];

/// Columns holding a JSON document as text (the SerDe keeps nested objects as strings there).
const JSON_TEXT: &[&str] =
    &["requestparameters", "responseelements", "additionaleventdata", "serviceeventdetails", "edgedevicedetails"];

/// Columns selected as `json_format(CAST(… AS JSON))`.
const JSON_STRUCT: &[&str] = &["useridentity", "resources", "tlsdetails", "addendum"];

fn record_name(name: &str) -> String {
    NAMES.iter().find(|(hive, _)| *hive == name).map(|(_, ct)| ct.to_string()).unwrap_or_else(|| name.to_string())
}

/// Give a struct rendered as JSON back CloudTrail's field names, dropping the nulls that stand for
/// fields the record did not have. `parent` is the field the value sits in.
fn rename(value: Value, parent: &str) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if v.is_null() {
                    continue;
                }
                // A resource's `arn` is `ARN` in CloudTrail.
                let name = if parent == "resources" && k == "arn" { "ARN".to_string() } else { record_name(&k) };
                // A MAP column's keys are data (web identity claims), not field names.
                let v = if parent == "webidfederationdata" && k == "attributes" { v } else { rename(v, &k) };
                out.insert(name, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| rename(v, parent)).collect()),
        other => other,
    }
}

/// A struct column's text: JSON from `json_format` (an object on engine v3, an array on engine v2),
/// or, as a last resort, Athena's `{key=value, …}` rendering, of which only flat fields are kept.
fn struct_value(column: &str, text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) if column == "useridentity" => {
            let map: Map<String, Value> =
                USERIDENTITY_FIELDS.iter().zip(items).map(|(name, v)| (name.to_string(), v)).collect();
            rename(Value::Object(map), column)
        }
        Ok(v) => rename(v, column),
        Err(_) => rename(Value::Object(struct_rendering(text)), column),
    }
}

/// Flat fields of `{type=IAMUser, arn=arn:…, sessioncontext={…}}`; nested structs are skipped.
fn struct_rendering(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(inner) = text.trim().strip_prefix('{').and_then(|t| t.strip_suffix('}')) else { return out };
    let (mut depth, mut start) = (0i32, 0usize);
    let mut fields = Vec::new();
    for (i, c) in inner.char_indices() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                fields.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&inner[start..]);
    for field in fields {
        if let Some((k, v)) = field.split_once('=') {
            let (k, v) = (k.trim(), v.trim());
            if !v.starts_with('{') && !v.starts_with('[') && v != "null" {
                out.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
    }
    out
}

/// Rebuild a CloudTrail record from a result row of [`hop_query`]: field names as in the log,
/// `userIdentity` and the other structs as objects, request and response as embedded JSON.
/// NULL columns are left out; the [`SOURCE_COLUMN`] is not part of the record.
pub fn row_to_record(columns: &[&str], row: &[Option<String>]) -> Value {
    let mut record = Map::new();
    for (column, cell) in columns.iter().zip(row) {
        let column = column.to_ascii_lowercase();
        let Some(text) = cell else { continue };
        if column == SOURCE_COLUMN {
            continue;
        }
        let value = if JSON_STRUCT.contains(&column.as_str()) {
            if text == "null" {
                continue;
            }
            struct_value(&column, text)
        } else if JSON_TEXT.contains(&column.as_str()) {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
        } else if column == "readonly" {
            match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(text.clone()),
            }
        } else {
            Value::String(text.clone())
        };
        record.insert(record_name(&column), value);
    }
    Value::Object(record)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use serde_json::value::RawValue;

    use super::*;
    use crate::Record;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn spec() -> TableSpec {
        TableSpec {
            database: "security".into(),
            table: "cloudtrail_rekey".into(),
            bucket: "org-trail-logs".into(),
            prefix: "trails/main/".into(),
            accounts: vec!["111122223333".into(), "444455556666".into()],
            org_id: Some("o-abcde12345".into()),
            regions: vec!["us-east-1".into(), "eu-west-1".into()],
            start_date: at("2025-01-15T10:00:00Z"),
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().map(str::trim).collect()
    }

    #[test]
    fn ddl_is_the_documented_table_with_projection() {
        let ddl = create_table_ddl(&spec()).unwrap();
        let l = lines(&ddl);
        for want in [
            "CREATE EXTERNAL TABLE IF NOT EXISTS `security`.`cloudtrail_rekey` (",
            "useridentity STRUCT<",
            "accesskeyid: STRING,",
            "sessionissuer: STRUCT<",
            "requestparameters STRING,",
            "responseelements STRING,",
            "additionaleventdata STRING,",
            "PARTITIONED BY (`account` STRING, `region` STRING, `timestamp` STRING)",
            "ROW FORMAT SERDE 'org.apache.hive.serde2.JsonSerDe'",
            "STORED AS INPUTFORMAT 'com.amazon.emr.cloudtrail.CloudTrailInputFormat'",
            "OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat'",
            "LOCATION 's3://org-trail-logs/trails/main/AWSLogs/o-abcde12345/'",
            "'projection.enabled'='true',",
            "'projection.account.type'='enum',",
            "'projection.account.values'='111122223333,444455556666',",
            "'projection.region.type'='enum',",
            "'projection.region.values'='us-east-1,eu-west-1',",
            "'projection.timestamp.type'='date',",
            "'projection.timestamp.format'='yyyy/MM/dd',",
            "'projection.timestamp.range'='2025/01/15,NOW',",
            "'storage.location.template'='s3://org-trail-logs/trails/main/AWSLogs/o-abcde12345/${account}/CloudTrail/${region}/${timestamp}'",
        ] {
            assert!(l.contains(&want), "missing line {want:?} in\n{ddl}");
        }
    }

    #[test]
    fn ddl_without_prefix_or_org() {
        let s = TableSpec { prefix: String::new(), org_id: None, ..spec() };
        let ddl = create_table_ddl(&s).unwrap();
        assert!(lines(&ddl).contains(&"LOCATION 's3://org-trail-logs/AWSLogs/'"), "{ddl}");
        assert!(ddl.contains("'s3://org-trail-logs/AWSLogs/${account}/CloudTrail/${region}/${timestamp}'"));
    }

    #[test]
    fn ddl_refuses_names_that_would_break_out_of_the_text() {
        let bad = [
            TableSpec { table: "t; DROP TABLE x".into(), ..spec() },
            TableSpec { database: "Sec`urity".into(), ..spec() },
            TableSpec { bucket: "b'x".into(), ..spec() },
            TableSpec { prefix: "a/${region}/".into(), ..spec() },
            TableSpec { prefix: "a' b".into(), ..spec() },
            TableSpec { accounts: vec!["1111'2223333".into()], ..spec() },
            TableSpec { accounts: vec![], ..spec() },
            TableSpec { regions: vec!["us-east-1',x".into()], ..spec() },
            TableSpec { org_id: Some("o-x'".into()), ..spec() },
        ];
        for s in bad {
            assert!(matches!(create_table_ddl(&s), Err(SqlError::BadName { .. })), "{s:?}");
        }
    }

    #[test]
    fn hop_query_filters_keys_partitions_and_times() {
        let keys = vec!["AKIAIOSFODNN7EXAMPLE".to_string(), "ASIAY34FZKBOKMUTVV7A".to_string()];
        let sql =
            hop_query("cloudtrail_rekey", &keys, Some(at("2026-03-01T00:30:00Z")), Some(at("2026-03-04T23:30:00Z")))
                .unwrap();
        let l = lines(&sql);
        for want in [
            "json_format(CAST(useridentity AS JSON)) AS useridentity,",
            "requestparameters,",
            "responseelements,",
            "\"$path\" AS log_object",
            "FROM \"cloudtrail_rekey\"",
            "WHERE useridentity.accesskeyid IN ('AKIAIOSFODNN7EXAMPLE', 'ASIAY34FZKBOKMUTVV7A')",
            "AND \"timestamp\" >= '2026/03/01'",
            // until + the delivery margin crosses midnight: the next day's files are read too.
            "AND \"timestamp\" <= '2026/03/05'",
            "AND eventtime >= '2026-03-01T00:30:00Z'",
            "AND eventtime <= '2026-03-04T23:30:00Z'",
            "ORDER BY eventtime, eventid",
        ] {
            assert!(l.contains(&want), "missing line {want:?} in\n{sql}");
        }
        let open = hop_query("t", &keys[..1], None, None).unwrap();
        assert!(!open.contains("timestamp\" >=") && !open.contains("eventtime >="), "{open}");
        assert!(DELIVERY_MARGIN >= Duration::from_secs(1800));
    }

    #[test]
    fn hop_query_refuses_anything_but_key_ids() {
        for bad in [
            "AKIA' OR '1'='1",
            "akiaiosfodnn7example",
            "AKIAIOSFODNN7EXAMPL\u{0130}",
            "AKIA",
            "AKIAIOSFODNN7EXAMPLE'--",
            "AKIAIOSFODNN7EXAMPLE ",
            "",
        ] {
            let err = hop_query("t", &["AKIAIOSFODNN7EXAMPLE".to_string(), bad.to_string()], None, None).unwrap_err();
            assert!(matches!(err, SqlError::BadKey(_)), "{bad:?}: {err:?}");
        }
        assert_eq!(hop_query("t", &[], None, None), Err(SqlError::NoKeys));
        assert!(matches!(
            hop_query("t\" --", &["AKIAIOSFODNN7EXAMPLE".into()], None, None),
            Err(SqlError::BadName { .. })
        ));
        let long = "A".repeat(129);
        assert!(validate_key(&long).is_err());
        assert!(validate_key(&"A".repeat(128)).is_ok());
    }

    const COLS: &[&str] = &[
        "eventversion",
        "useridentity",
        "eventtime",
        "eventsource",
        "eventname",
        "awsregion",
        "sourceipaddress",
        "errorcode",
        "requestparameters",
        "responseelements",
        "eventid",
        "readonly",
        "resources",
        "log_object",
    ];

    fn cells(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|c| c.map(str::to_string)).collect()
    }

    #[test]
    fn row_becomes_a_record_the_engine_reads() {
        let row = cells(&[
            Some("1.08"),
            Some(
                r#"{"type":"IAMUser","principalid":"AIDAX","arn":"arn:aws:iam::111122223333:user/app","accountid":"111122223333","invokedby":null,"accesskeyid":"AKIAIOSFODNN7EXAMPLE","username":"app","onbehalfof":null,"sessioncontext":{"attributes":{"mfaauthenticated":"false","creationdate":"2026-03-01T10:00:00Z"},"sessionissuer":null,"ec2roledelivery":null,"webidfederationdata":null}}"#,
            ),
            Some("2026-03-01T10:00:01Z"),
            Some("sts.amazonaws.com"),
            Some("AssumeRole"),
            Some("us-east-1"),
            Some("203.0.113.7"),
            None,
            Some(r#"{"roleArn":"arn:aws:iam::111122223333:role/admin","roleSessionName":"s"}"#),
            Some(
                r#"{"credentials":{"accessKeyId":"ASIAY34FZKBOKMUTVV7A","sessionToken":"t","expiration":"Mar 1, 2026, 11:00:01 AM"},"assumedRoleUser":{"assumedRoleId":"AROAX:s","arn":"arn:aws:sts::111122223333:assumed-role/admin/s"}}"#,
            ),
            Some("e1"),
            Some("false"),
            Some(
                r#"[{"arn":"arn:aws:iam::111122223333:role/admin","accountid":"111122223333","type":"AWS::IAM::Role"}]"#,
            ),
            Some("s3://b/AWSLogs/111122223333/CloudTrail/us-east-1/2026/03/01/f.json.gz"),
        ]);
        let rec = row_to_record(COLS, &row);
        assert_eq!(rec["userIdentity"]["accessKeyId"], "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(rec["userIdentity"]["sessionContext"]["attributes"]["mfaAuthenticated"], "false");
        assert!(rec["userIdentity"].get("invokedBy").is_none(), "nulls are dropped");
        assert_eq!(
            rec["requestParameters"],
            json!({"roleArn":"arn:aws:iam::111122223333:role/admin","roleSessionName":"s"})
        );
        assert_eq!(rec["readOnly"], json!(false));
        assert_eq!(rec["resources"][0]["ARN"], "arn:aws:iam::111122223333:role/admin");
        assert_eq!(rec["resources"][0]["accountId"], "111122223333");
        assert_eq!(rec["sourceIPAddress"], "203.0.113.7");
        assert!(rec.get("errorCode").is_none() && rec.get("log_object").is_none());

        // The engine's own parser finds the signer and the minted key in it.
        let raw = RawValue::from_string(rec.to_string()).unwrap();
        let parsed = Record::parse(&raw).unwrap();
        assert_eq!(parsed.access_key_id(), Some("AKIAIOSFODNN7EXAMPLE"));
        assert_eq!(parsed.time(), Some("2026-03-01T10:00:01Z"));
        let minted = parsed.minted().unwrap();
        assert_eq!(minted.key, "ASIAY34FZKBOKMUTVV7A");
        assert_eq!(minted.principal.as_deref(), Some("arn:aws:sts::111122223333:assumed-role/admin/s"));
    }

    #[test]
    fn older_struct_renderings_still_give_the_signer() {
        let cols = ["useridentity", "eventname", "responseelements"];
        // Engine v2: a struct cast to JSON is an array in declaration order.
        let v2 = cells(&[
            Some(
                r#"["AssumedRole","AROAX:s","arn:aws:sts::1:assumed-role/r/s","1",null,"ASIAY34FZKBOKMUTVV7A",null,null,null]"#,
            ),
            Some("ListBuckets"),
            Some("not json"),
        ]);
        let rec = row_to_record(&cols, &v2);
        assert_eq!(rec["userIdentity"]["accessKeyId"], "ASIAY34FZKBOKMUTVV7A");
        assert_eq!(rec["userIdentity"]["type"], "AssumedRole");
        assert_eq!(rec["responseElements"], "not json");
        // The struct as Athena prints it, when selected without json_format.
        let printed = cells(&[
            Some(
                "{type=IAMUser, principalid=AIDAX, arn=arn:aws:iam::1:user/a, accountid=1, invokedby=null, accesskeyid=AKIAIOSFODNN7EXAMPLE, username=a, sessioncontext={attributes={mfaauthenticated=false}}}",
            ),
            Some("GetCallerIdentity"),
            None,
        ]);
        let rec = row_to_record(&cols, &printed);
        assert_eq!(rec["userIdentity"]["accessKeyId"], "AKIAIOSFODNN7EXAMPLE");
        assert_eq!(rec["userIdentity"]["userName"], "a");
        assert!(rec["userIdentity"].get("invokedBy").is_none());
    }

    #[test]
    fn web_identity_claims_keep_their_names() {
        let cols = ["useridentity"];
        let row = cells(&[Some(
            r#"{"type":"WebIdentityUser","accesskeyid":"ASIAY34FZKBOKMUTVV7A","sessioncontext":{"webidfederationdata":{"federatedprovider":"arn:aws:iam::1:oidc-provider/x","attributes":{"x:sub":"repo:org/app","x:aud":"sts.amazonaws.com"}}}}"#,
        )]);
        let rec = row_to_record(&cols, &row);
        let web = &rec["userIdentity"]["sessionContext"]["webIdFederationData"];
        assert_eq!(web["federatedProvider"], "arn:aws:iam::1:oidc-provider/x");
        assert_eq!(web["attributes"]["x:sub"], "repo:org/app");
    }

    #[test]
    fn cost_estimate_follows_the_price_list() {
        assert_eq!(estimated_cost_usd(0), 0.0);
        // The 10 MB minimum.
        assert!((estimated_cost_usd(1) - 10.0 * 1048576.0 / 1e12 * 5.0).abs() < 1e-12);
        // One TB (decimal) is $5.
        let tb = 1_000_000_000_000u64;
        assert!((estimated_cost_usd(tb) - 5.0).abs() < 1e-3);
    }
}
