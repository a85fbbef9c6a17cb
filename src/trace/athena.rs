//! `--athena`: the trace search run as Athena queries over the trail bucket, for organizations whose
//! trails are too big to scan from one machine. The SQL and the row → record mapping are in
//! `rekey_trail::athena`; this is the client flow, behind [`AthenaApi`] so that tests can script it
//! (moto's Athena accepts queries but never executes them).
//!
//! One query per hop of the key chain: hop 0 looks for the queried keys, each next hop for the keys
//! the previous one saw minted, until no new key appears. Each hop scans the window once, so the
//! cost is about hops × window bytes × $5/TB (see `rekey_trail::athena`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_athena::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_athena::types::{QueryExecutionContext, QueryExecutionState, ResultConfiguration};
use backon::{BackoffBuilder, ExponentialBuilder};
use rekey_trail::athena::{self as sql, SOURCE_COLUMN, SqlError, TableSpec};
use rekey_trail::time::parse as parse_time;
use rekey_trail::{DerivedKey, Match, Query, Record};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryState {
    Queued,
    Running,
    /// Done; what Athena bills for comes from the query statistics.
    Succeeded {
        bytes_scanned: u64,
    },
    Failed(String),
    Cancelled,
}

/// One page of results: column names, rows (NULL as None), and the token of the next page.
pub type Page = (Vec<String>, Vec<Vec<Option<String>>>, Option<String>);

#[async_trait]
pub trait AthenaApi: Send + Sync {
    /// Start a query; returns its execution id. `output` may be empty when the workgroup sets it.
    async fn start(
        &self,
        sql: &str,
        database: &str,
        output: &str,
        workgroup: Option<&str>,
    ) -> Result<String, AthenaError>;
    async fn state(&self, id: &str) -> Result<QueryState, AthenaError>;
    /// A page of a finished query's results. The first row of the first page is the header.
    async fn results(&self, id: &str, next: Option<String>) -> Result<Page, AthenaError>;
    /// Stop a query we gave up on: a running query goes on scanning, and billing, on its own.
    async fn stop(&self, _id: &str) -> Result<(), AthenaError> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AthenaError {
    #[error("Athena: {0}")]
    Api(String),
    #[error("Athena query {id} ({what}) failed: {reason}")]
    Failed { id: String, what: String, reason: String },
    #[error("Athena query {id} ({what}) was cancelled")]
    Cancelled { id: String, what: String },
    #[error("Athena query {id} ({what}) did not finish within {timeout:?}; it was stopped")]
    Timeout { id: String, what: String, timeout: Duration },
    #[error(transparent)]
    Sql(#[from] SqlError),
}

/// Everything `--athena` needs besides the query itself.
#[derive(Debug, Clone)]
pub struct AthenaSettings {
    /// Database, table name, and where the trail is, for the table DDL.
    pub table: TableSpec,
    /// `s3://…/` for query results; empty when the workgroup enforces its own.
    pub output: String,
    pub workgroup: Option<String>,
    /// Bound on the wait for each query.
    pub timeout: Duration,
    /// Run the `CREATE EXTERNAL TABLE IF NOT EXISTS` first (free: DDL scans nothing).
    pub create_table: bool,
}

/// One query that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryRun {
    /// The hop (0: the queried keys); None for the DDL.
    pub hop: Option<usize>,
    pub keys: Vec<String>,
    pub execution_id: String,
    pub bytes_scanned: u64,
    pub rows: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct AthenaSummary {
    pub queries: Vec<QueryRun>,
    pub matches: u64,
    pub derived: Vec<DerivedKey>,
    /// Rows that did not rebuild into a record the engine could read.
    pub malformed_records: u64,
    /// Minted key ids that are not key ids, so never put into SQL.
    pub rejected_keys: Vec<String>,
    pub elapsed: Duration,
}

impl AthenaSummary {
    pub fn bytes_scanned(&self) -> u64 {
        self.queries.iter().map(|q| q.bytes_scanned).sum()
    }

    /// What the queries cost at list price, 10 MB minimum per query included.
    pub fn estimated_cost_usd(&self) -> f64 {
        self.queries.iter().map(|q| sql::estimated_cost_usd(q.bytes_scanned)).sum()
    }

    /// The same summary as a local scan reports. Athena counts gzipped bytes, so they go to
    /// `bytes_read`; nothing here knows the uncompressed size.
    pub fn to_summary(&self) -> rekey_trail::Summary {
        rekey_trail::Summary {
            bytes_read: self.bytes_scanned(),
            matches: self.matches,
            malformed_records: self.malformed_records,
            derived: self.derived.clone(),
            elapsed: self.elapsed,
            ..Default::default()
        }
    }
}

/// Run one statement to completion; returns its execution id and bytes scanned.
async fn run(
    api: &dyn AthenaApi,
    settings: &AthenaSettings,
    statement: &str,
    what: &str,
) -> Result<(String, u64), AthenaError> {
    let id = api.start(statement, &settings.table.database, &settings.output, settings.workgroup.as_deref()).await?;
    let deadline = tokio::time::Instant::now() + settings.timeout;
    // Most queries over a projected window take seconds; cap the pause so a finished one is seen soon.
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        match api.state(&id).await? {
            QueryState::Succeeded { bytes_scanned } => return Ok((id, bytes_scanned)),
            QueryState::Failed(reason) => return Err(AthenaError::Failed { id, what: what.into(), reason }),
            QueryState::Cancelled => return Err(AthenaError::Cancelled { id, what: what.into() }),
            QueryState::Queued | QueryState::Running => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            if let Err(e) = api.stop(&id).await {
                tracing::warn!(%id, error = %e, "could not stop the Athena query");
            }
            return Err(AthenaError::Timeout { id, what: what.into(), timeout: settings.timeout });
        }
        let pause = backoff.next().unwrap_or(Duration::from_secs(5)).min(deadline - now);
        tokio::time::sleep(pause).await;
    }
}

/// The earliest a hop's keys can have signed anything: the first of their mintings. Keys of unknown
/// minting time (the queried ones) keep the whole window.
fn hop_since(
    window: Option<SystemTime>,
    keys: &[String],
    minted_at: &HashMap<String, SystemTime>,
) -> Option<SystemTime> {
    let Some(first) = keys.iter().map(|k| minted_at.get(k).copied()).collect::<Option<Vec<_>>>() else {
        return window;
    };
    match (window, first.into_iter().min()) {
        (Some(w), Some(f)) => Some(w.max(f)),
        (w, f) => w.or(f),
    }
}

/// Find the records of `query.keys` (and with `follow`, of every key they minted) with Athena,
/// calling `on_match` for each as the engine does.
pub async fn search(
    api: &dyn AthenaApi,
    settings: &AthenaSettings,
    query: &Query,
    on_match: &mut dyn FnMut(Match),
) -> Result<AthenaSummary, AthenaError> {
    let started = tokio::time::Instant::now();
    let mut summary = AthenaSummary::default();
    let mut hop_keys: Vec<String> = Vec::new();
    for k in &query.keys {
        let k = k.trim().to_string();
        if !k.is_empty() && !hop_keys.contains(&k) {
            sql::validate_key(&k)?;
            hop_keys.push(k);
        }
    }
    if hop_keys.is_empty() {
        return Err(SqlError::NoKeys.into());
    }

    if settings.create_table {
        let ddl = sql::create_table_ddl(&settings.table)?;
        let t = tokio::time::Instant::now();
        let (id, bytes) = run(api, settings, &ddl, "create table").await?;
        summary.queries.push(QueryRun {
            hop: None,
            keys: Vec::new(),
            execution_id: id,
            bytes_scanned: bytes,
            rows: 0,
            elapsed: t.elapsed(),
        });
    }

    let mut known: Vec<String> = hop_keys.clone();
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut minted_at: HashMap<String, SystemTime> = HashMap::new();
    let mut hop = 0;
    while !hop_keys.is_empty() {
        let since = hop_since(query.since, &hop_keys, &minted_at);
        let statement = sql::hop_query(&settings.table.table, &hop_keys, since, query.until)?;
        let what = format!("hop {hop}");
        let t = tokio::time::Instant::now();
        let (id, bytes_scanned) = run(api, settings, &statement, &what).await?;
        let mut next_keys = Vec::new();
        let mut rows = 0u64;
        let mut token = None;
        let mut first_page = true;
        loop {
            let (columns, page, next) = api.results(&id, token.take()).await?;
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            let source_at = columns.iter().position(|c| c.eq_ignore_ascii_case(SOURCE_COLUMN));
            let skip = usize::from(first_page);
            first_page = false;
            for row in page.iter().skip(skip) {
                rows += 1;
                let json = sql::row_to_record(&columns, row).to_string();
                let Ok(raw) = RawValue::from_string(json) else {
                    summary.malformed_records += 1;
                    continue;
                };
                let Ok(rec) = Record::parse(&raw) else {
                    summary.malformed_records += 1;
                    continue;
                };
                let Some(signer) = rec.access_key_id().filter(|k| hop_keys.iter().any(|h| h == k)) else {
                    continue;
                };
                let own = |s: Option<&str>| s.map(str::to_string);
                if query.follow
                    && let Some(minted) = rec.minted()
                    && !known.contains(&minted.key)
                {
                    known.push(minted.key.clone());
                    parent.insert(minted.key.clone(), signer.to_string());
                    if let Some(t) = rec.time().and_then(parse_time) {
                        minted_at.insert(minted.key.clone(), t);
                    }
                    summary.derived.push(DerivedKey {
                        key: minted.key.clone(),
                        parent: signer.to_string(),
                        event_name: rec.event_name.get().unwrap_or_default().to_string(),
                        event_time: own(rec.time()),
                        principal: minted.principal,
                    });
                    // Only key ids reach SQL; a record claiming another "key" is reported, not followed.
                    match sql::validate_key(&minted.key) {
                        Ok(_) => next_keys.push(minted.key),
                        Err(e) => {
                            tracing::warn!(error = %e, "minted key not followed");
                            summary.rejected_keys.push(minted.key);
                        }
                    }
                }
                let mut chain = vec![signer.to_string()];
                while let Some(p) = parent.get(chain.last().expect("non-empty")) {
                    if chain.contains(p) {
                        break;
                    }
                    chain.push(p.clone());
                }
                chain.reverse();
                summary.matches += 1;
                on_match(Match {
                    chain,
                    source: source_at.and_then(|i| row.get(i).cloned().flatten()).unwrap_or_else(|| id.clone()),
                    raw: raw.get().to_string(),
                    event_time: own(rec.time()),
                    event_name: own(rec.event_name.get()),
                    event_source: own(rec.event_source.get()),
                    aws_region: own(rec.aws_region.get()),
                    source_ip: own(rec.source_ip.get()),
                    error_code: own(rec.error_code.get()),
                    event_id: own(rec.event_id.get()),
                });
            }
            match next {
                Some(n) => token = Some(n),
                None => break,
            }
        }
        tracing::info!(hop, keys = hop_keys.len(), rows, bytes_scanned, "Athena hop done");
        summary.queries.push(QueryRun {
            hop: Some(hop),
            keys: std::mem::take(&mut hop_keys),
            execution_id: id,
            bytes_scanned,
            rows,
            elapsed: t.elapsed(),
        });
        if query.follow {
            hop_keys = next_keys;
        }
        hop += 1;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn api_error<E, R>(e: SdkError<E, R>) -> AthenaError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    AthenaError::Api(crate::aws::error_text(&e))
}

#[async_trait]
impl AthenaApi for aws_sdk_athena::Client {
    async fn start(
        &self,
        sql: &str,
        database: &str,
        output: &str,
        workgroup: Option<&str>,
    ) -> Result<String, AthenaError> {
        let output = (!output.is_empty()).then(|| ResultConfiguration::builder().output_location(output).build());
        let out = self
            .start_query_execution()
            .query_string(sql)
            .query_execution_context(QueryExecutionContext::builder().database(database).build())
            .set_result_configuration(output)
            .set_work_group(workgroup.map(str::to_string))
            .send()
            .await
            .map_err(api_error)?;
        out.query_execution_id().map(str::to_string).ok_or_else(|| AthenaError::Api("no query execution id".into()))
    }

    async fn state(&self, id: &str) -> Result<QueryState, AthenaError> {
        let out = self.get_query_execution().query_execution_id(id).send().await.map_err(api_error)?;
        let exec = out.query_execution().ok_or_else(|| AthenaError::Api(format!("query {id} not found")))?;
        let status = exec.status().ok_or_else(|| AthenaError::Api(format!("query {id} has no status")))?;
        Ok(match status.state() {
            Some(QueryExecutionState::Succeeded) => QueryState::Succeeded {
                bytes_scanned: exec
                    .statistics()
                    .and_then(|s| s.data_scanned_in_bytes())
                    .and_then(|b| u64::try_from(b).ok())
                    .unwrap_or(0),
            },
            Some(QueryExecutionState::Failed) => QueryState::Failed(
                status
                    .state_change_reason()
                    .or_else(|| status.athena_error().and_then(|e| e.error_message()))
                    .unwrap_or("no reason given")
                    .to_string(),
            ),
            Some(QueryExecutionState::Cancelled) => QueryState::Cancelled,
            Some(QueryExecutionState::Queued) => QueryState::Queued,
            // Running, and states newer than this SDK: keep polling until the timeout.
            _ => QueryState::Running,
        })
    }

    async fn results(&self, id: &str, next: Option<String>) -> Result<Page, AthenaError> {
        let out = self
            .get_query_results()
            .query_execution_id(id)
            .set_next_token(next)
            .max_results(1000)
            .send()
            .await
            .map_err(api_error)?;
        let set = out.result_set();
        let columns = set
            .and_then(|s| s.result_set_metadata())
            .map(|m| m.column_info().iter().map(|c| c.name().to_string()).collect())
            .unwrap_or_default();
        let rows = set
            .map(|s| {
                s.rows()
                    .iter()
                    .map(|r| r.data().iter().map(|d| d.var_char_value().map(str::to_string)).collect())
                    .collect()
            })
            .unwrap_or_default();
        Ok((columns, rows, out.next_token().map(str::to_string)))
    }

    async fn stop(&self, id: &str) -> Result<(), AthenaError> {
        self.stop_query_execution().query_execution_id(id).send().await.map_err(api_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const AKIA: &str = "AKIAIOSFODNN7EXAMPLE";
    const ASIA: &str = "ASIAY34FZKBOKMUTVV7A";

    const COLUMNS: &[&str] = &[
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
        "log_object",
    ];

    fn row(key: &str, id: &str, time: &str, name: &str, response: Option<&str>) -> Vec<Option<String>> {
        let ident = format!(r#"{{"type":"IAMUser","accesskeyid":"{key}","arn":"arn:aws:iam::111122223333:user/app"}}"#);
        [
            Some("1.08"),
            Some(ident.as_str()),
            Some(time),
            Some("sts.amazonaws.com"),
            Some(name),
            Some("us-east-1"),
            Some("203.0.113.7"),
            None,
            Some("{}"),
            response,
            Some(id),
            Some("s3://trail/AWSLogs/111122223333/CloudTrail/us-east-1/2026/03/01/f.json.gz"),
        ]
        .into_iter()
        .map(|c| c.map(str::to_string))
        .collect()
    }

    fn header() -> Vec<Option<String>> {
        COLUMNS.iter().map(|c| Some(c.to_string())).collect()
    }

    fn columns() -> Vec<String> {
        COLUMNS.iter().map(|c| c.to_string()).collect()
    }

    /// A scripted Athena: the SQL it was given, and per kind of query (picked by the text) the states
    /// it goes through and the pages it returns.
    #[derive(Default)]
    struct Fake {
        sql: Mutex<Vec<String>>,
        polls: Mutex<HashMap<String, usize>>,
        stopped: Mutex<Vec<String>>,
        /// Polls spent running before success; usize::MAX: never finishes.
        running_polls: usize,
        fail: Option<(&'static str, &'static str)>,
    }

    impl Fake {
        fn id_for(sql: &str) -> String {
            if sql.starts_with("CREATE") {
                "ddl".into()
            } else if sql.contains(&format!("IN ('{AKIA}')")) {
                "hop0".into()
            } else if sql.contains(&format!("IN ('{ASIA}')")) {
                "hop1".into()
            } else {
                "other".into()
            }
        }
    }

    #[async_trait]
    impl AthenaApi for Fake {
        async fn start(
            &self,
            sql: &str,
            database: &str,
            output: &str,
            wg: Option<&str>,
        ) -> Result<String, AthenaError> {
            assert_eq!((database, output, wg), ("security", "s3://results/rekey/", Some("investigations")));
            self.sql.lock().unwrap().push(sql.to_string());
            Ok(Self::id_for(sql))
        }

        async fn state(&self, id: &str) -> Result<QueryState, AthenaError> {
            let mut polls = self.polls.lock().unwrap();
            let n = polls.entry(id.to_string()).or_default();
            *n += 1;
            if *n <= self.running_polls {
                return Ok(if *n == 1 { QueryState::Queued } else { QueryState::Running });
            }
            if let Some((failing, reason)) = self.fail
                && failing == id
            {
                return Ok(QueryState::Failed(reason.into()));
            }
            let bytes_scanned = match id {
                "hop0" => 3_000_000_000,
                "hop1" => 2_000_000_000,
                _ => 0,
            };
            Ok(QueryState::Succeeded { bytes_scanned })
        }

        async fn results(&self, id: &str, next: Option<String>) -> Result<Page, AthenaError> {
            let assume = format!(
                r#"{{"credentials":{{"accessKeyId":"{ASIA}","sessionToken":"x"}},"assumedRoleUser":{{"arn":"arn:aws:sts::111122223333:assumed-role/admin/s"}}}}"#
            );
            Ok(match (id, next.as_deref()) {
                ("hop0", None) => (
                    columns(),
                    vec![
                        header(),
                        row(AKIA, "e1", "2026-03-01T10:00:00Z", "GetCallerIdentity", None),
                        row(AKIA, "e2", "2026-03-01T10:01:00Z", "AssumeRole", Some(&assume)),
                    ],
                    None,
                ),
                ("hop1", None) => (
                    columns(),
                    vec![header(), row(ASIA, "e3", "2026-03-01T10:02:00Z", "ListBuckets", None)],
                    Some("page2".into()),
                ),
                // Later pages carry no header row.
                ("hop1", Some("page2")) => {
                    (columns(), vec![row(ASIA, "e4", "2026-03-01T10:03:00Z", "CreateUser", None)], None)
                }
                _ => (Vec::new(), Vec::new(), None),
            })
        }

        async fn stop(&self, id: &str) -> Result<(), AthenaError> {
            self.stopped.lock().unwrap().push(id.to_string());
            Ok(())
        }
    }

    fn settings() -> AthenaSettings {
        AthenaSettings {
            table: TableSpec {
                database: "security".into(),
                table: "cloudtrail_rekey".into(),
                bucket: "trail".into(),
                prefix: String::new(),
                accounts: vec!["111122223333".into()],
                org_id: None,
                regions: vec!["us-east-1".into()],
                start_date: humantime::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
            },
            output: "s3://results/rekey/".into(),
            workgroup: Some("investigations".into()),
            timeout: Duration::from_secs(60),
            create_table: true,
        }
    }

    fn query(follow: bool) -> Query {
        let mut q = Query::new(vec![AKIA.to_string()]);
        q.follow = follow;
        q.since = Some(humantime::parse_rfc3339("2026-02-20T00:00:00Z").unwrap());
        q
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_minted_key_in_a_second_hop() {
        let fake = Fake { running_polls: 2, ..Default::default() };
        let mut matches = Vec::new();
        let summary = search(&fake, &settings(), &query(true), &mut |m| matches.push(m)).await.unwrap();

        let sql = fake.sql.lock().unwrap().clone();
        assert_eq!(sql.len(), 3, "{sql:#?}");
        assert!(sql[0].starts_with("CREATE EXTERNAL TABLE IF NOT EXISTS `security`.`cloudtrail_rekey`"));
        assert!(sql[1].contains(&format!("WHERE useridentity.accesskeyid IN ('{AKIA}')")), "{}", sql[1]);
        assert!(sql[1].contains("eventtime >= '2026-02-20T00:00:00Z'"), "{}", sql[1]);
        assert!(sql[2].contains(&format!("WHERE useridentity.accesskeyid IN ('{ASIA}')")), "{}", sql[2]);
        // The ASIA key cannot have signed anything before it was minted: hop 1 starts there.
        assert!(sql[2].contains("eventtime >= '2026-03-01T10:01:00Z'"), "{}", sql[2]);

        let got: Vec<(Vec<String>, Option<String>)> =
            matches.iter().map(|m| (m.chain.clone(), m.event_id.clone())).collect();
        let akia = vec![AKIA.to_string()];
        let both = vec![AKIA.to_string(), ASIA.to_string()];
        assert_eq!(
            got,
            vec![
                (akia.clone(), Some("e1".into())),
                (akia, Some("e2".into())),
                (both.clone(), Some("e3".into())),
                (both, Some("e4".into())),
            ]
        );
        assert!(matches[0].source.ends_with("/2026/03/01/f.json.gz"));
        assert!(matches[2].raw.contains(&format!("\"accessKeyId\":\"{ASIA}\"")));
        assert_eq!(matches[3].event_name.as_deref(), Some("CreateUser"));

        assert_eq!(summary.matches, 4);
        assert_eq!(summary.derived.len(), 1);
        let d = &summary.derived[0];
        assert_eq!((d.key.as_str(), d.parent.as_str(), d.event_name.as_str()), (ASIA, AKIA, "AssumeRole"));
        assert_eq!(d.principal.as_deref(), Some("arn:aws:sts::111122223333:assumed-role/admin/s"));
        let hops: Vec<(Option<usize>, Vec<String>, u64)> =
            summary.queries.iter().map(|q| (q.hop, q.keys.clone(), q.rows)).collect();
        assert_eq!(
            hops,
            vec![(None, vec![], 0), (Some(0), vec![AKIA.to_string()], 2), (Some(1), vec![ASIA.to_string()], 2)]
        );
        assert_eq!(summary.bytes_scanned(), 5_000_000_000);
        assert!((summary.estimated_cost_usd() - 0.025).abs() < 1e-4, "{}", summary.estimated_cost_usd());
        assert_eq!(summary.to_summary().derived, summary.derived);
    }

    #[tokio::test(start_paused = true)]
    async fn without_follow_one_hop_and_no_table_when_told() {
        let fake = Fake::default();
        let s = AthenaSettings { create_table: false, ..settings() };
        let mut n = 0;
        let summary = search(&fake, &s, &query(false), &mut |_| n += 1).await.unwrap();
        assert_eq!(fake.sql.lock().unwrap().len(), 1);
        assert_eq!((n, summary.derived.len(), summary.queries.len()), (2, 0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_query_surfaces_its_reason() {
        let fake = Fake { fail: Some(("hop1", "HIVE_BAD_DATA: Error parsing field value")), ..Default::default() };
        let err = search(&fake, &settings(), &query(true), &mut |_| {}).await.unwrap_err();
        match &err {
            AthenaError::Failed { id, what, reason } => {
                assert_eq!((id.as_str(), what.as_str()), ("hop1", "hop 1"));
                assert!(reason.contains("HIVE_BAD_DATA"));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("HIVE_BAD_DATA: Error parsing field value"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_bounds_the_wait_and_stops_the_query() {
        let fake = Fake { running_polls: usize::MAX, ..Default::default() };
        let started = tokio::time::Instant::now();
        let err = search(&fake, &settings(), &query(true), &mut |_| {}).await.unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(err, AthenaError::Timeout { ref id, .. } if id == "ddl"), "{err:?}");
        assert!(waited >= Duration::from_secs(60) && waited < Duration::from_secs(61), "{waited:?}");
        let polls = fake.polls.lock().unwrap()["ddl"];
        // Backoff: far fewer polls than one every 500 ms.
        assert!((12..60).contains(&polls), "{polls} polls");
        assert_eq!(*fake.stopped.lock().unwrap(), vec!["ddl".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_that_are_not_key_ids_never_reach_sql() {
        let fake = Fake::default();
        let q = Query::new(vec!["AKIA' OR 1=1 --".to_string()]);
        let err = search(&fake, &settings(), &q, &mut |_| {}).await.unwrap_err();
        assert!(matches!(err, AthenaError::Sql(SqlError::BadKey(_))), "{err:?}");
        assert!(fake.sql.lock().unwrap().is_empty());
        let err = search(&fake, &settings(), &Query::new(vec![" ".into()]), &mut |_| {}).await.unwrap_err();
        assert!(matches!(err, AthenaError::Sql(SqlError::NoKeys)));
    }
}
