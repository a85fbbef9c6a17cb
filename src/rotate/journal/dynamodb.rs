//! Journals in a DynamoDB table, for runners whose disk does not outlive them (see the module
//! note of [`super`] for the items it holds and the conditional writes that keep one writer).

use std::path::PathBuf;
use std::time::SystemTime;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::aws::error_text;

use super::{Begin, Event, Journal, JournalError, Record, Sink, State, crash_after_from_env, fold};

/// The journals of one account in a DynamoDB table.
#[derive(Clone)]
pub struct SharedJournals {
    client: aws_sdk_dynamodb::Client,
    pub(super) table: String,
    /// A user name is unique only within its account.
    pub(super) account: String,
}

fn table_err(path: PathBuf, what: &str) -> impl FnOnce(String) -> JournalError + '_ {
    move |e| JournalError::Table { path, problem: format!("{what}: {e}") }
}

impl SharedJournals {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str, account: &str) -> Self {
        SharedJournals { client, table: table.to_string(), account: account.to_string() }
    }

    /// Fails when the table is missing or has the wrong keys, before any rotation starts.
    pub async fn check_table(&self) -> Result<(), String> {
        let out = self.client.describe_table().table_name(&self.table).send().await.map_err(|e| {
            if e.code() == Some("ResourceNotFoundException") {
                format!(
                    "the journal table {} does not exist; create it (partition key pk, type String; sort key sk, type Number)",
                    self.table
                )
            } else {
                format!("cannot read the journal table {}: {}", self.table, error_text(&e))
            }
        })?;
        let keys: Vec<(String, String)> = out
            .table()
            .map(|t| {
                t.key_schema()
                    .iter()
                    .map(|k| (k.attribute_name().to_string(), k.key_type().as_str().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let want = [("pk".to_string(), "HASH".to_string()), ("sk".to_string(), "RANGE".to_string())];
        if !want.iter().all(|w| keys.contains(w)) {
            return Err(format!(
                "the journal table {} does not have the keys rekey needs (partition key pk, type String; sort key sk, type Number)",
                self.table
            ));
        }
        Ok(())
    }

    pub(super) fn marker_pk(&self, user: &str) -> String {
        format!("active#{}/{user}", self.account)
    }

    pub(super) fn location(&self, pk: &str) -> PathBuf {
        PathBuf::from(format!("dynamodb://{}/{pk}", self.table))
    }

    /// The records' `pk` of the unfinished journal of `user`, if there is one.
    pub(super) async fn marker(&self, user: &str) -> Result<Option<String>, JournalError> {
        let pk = self.marker_pk(user);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(pk.clone()))
            .key("sk", AttributeValue::N("0".into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error_text(&e))
            .map_err(table_err(self.location(&pk), "reading"))?;
        Ok(out.item().and_then(|i| i.get("journal")).and_then(|v| v.as_s().ok()).cloned())
    }

    pub(super) async fn create(&self, begin: Begin, now: SystemTime) -> Result<Journal, JournalError> {
        let user = begin.user.clone();
        let pk = format!("journal#{}/{user}/{}", self.account, begin.rotation_id);
        let mut journal = Journal {
            path: self.location(&pk),
            sink: Sink::Table { store: self.clone(), pk: pk.clone() },
            next_seq: 1,
            state: State::new(begin.clone()),
            crash_after: crash_after_from_env(),
        };
        // The first record goes in before the marker, so that a marker always points to a journal
        // that can be read: records without a marker (a crash in between) are only an orphan.
        let record = journal.next_record(Event::Begin(begin), now);
        journal.append(&record).await?;
        let marker = self.marker_pk(&user);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(marker.clone()))
            .item("sk", AttributeValue::N("0".into()))
            .item("journal", AttributeValue::S(pk))
            .item("user", AttributeValue::S(user.clone()))
            .item("account", AttributeValue::S(self.account.clone()))
            .item("started_at", AttributeValue::S(rekey_trail::time::format(now)))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                let path = match self.marker(&user).await {
                    Ok(Some(records)) => self.location(&records),
                    _ => self.location(&marker),
                };
                return Err(JournalError::Unfinished { user, path });
            }
            Err(e) => return Err(table_err(self.location(&marker), "starting")(error_text(&e))),
        }
        journal.applied(record)?;
        Ok(journal)
    }

    pub(super) async fn open(&self, user: &str) -> Result<Option<Journal>, JournalError> {
        let Some(pk) = self.marker(user).await? else { return Ok(None) };
        let (state, next_seq) = self.load(&pk).await?;
        Ok(Some(Journal {
            path: self.location(&pk),
            sink: Sink::Table { store: self.clone(), pk },
            next_seq,
            state,
            crash_after: crash_after_from_env(),
        }))
    }

    pub(super) async fn load(&self, pk: &str) -> Result<(State, u64), JournalError> {
        let path = self.location(pk);
        let mut lines = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_string()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| error_text(&e))
                .map_err(table_err(path.clone(), "reading"))?;
            for item in out.items() {
                lines.push(item.get("record").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default());
            }
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        // A put is all or nothing: no record is ever torn, so every line must parse.
        fold(&path, &lines, false)
    }

    pub(super) async fn list_unfinished(&self) -> Result<Vec<(PathBuf, State)>, JournalError> {
        let prefix = format!("active#{}/", self.account);
        let mut journals = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(pk, :p) AND sk = :zero")
                .expression_attribute_values(":p", AttributeValue::S(prefix.clone()))
                .expression_attribute_values(":zero", AttributeValue::N("0".into()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| error_text(&e))
                .map_err(table_err(self.location(&prefix), "listing"))?;
            journals.extend(out.items().iter().filter_map(|i| i.get("journal").and_then(|v| v.as_s().ok()).cloned()));
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        journals.sort();
        let mut out = Vec::new();
        for pk in journals {
            let (state, _) = self.load(&pk).await?;
            out.push((self.location(&pk), state));
        }
        Ok(out)
    }

    pub(super) async fn put_record(&self, pk: &str, record: &Record, line: String) -> Result<(), JournalError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(pk.to_string()))
            .item("sk", AttributeValue::N(record.seq.to_string()))
            .item("record", AttributeValue::S(line))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(JournalError::Table {
                path: self.location(pk),
                problem: format!(
                    "record {} was already written by another runner: two processes are driving this rotation; let one finish",
                    record.seq
                ),
            }),
            Err(e) => Err(table_err(self.location(pk), "writing")(error_text(&e))),
        }
    }

    pub(super) async fn archive(&self, pk: &str, user: &str) -> Result<PathBuf, JournalError> {
        let marker = self.marker_pk(user);
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(marker.clone()))
            .key("sk", AttributeValue::N("0".into()))
            .condition_expression("#j = :j")
            .expression_attribute_names("#j", "journal")
            .expression_attribute_values(":j", AttributeValue::S(pk.to_string()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(self.location(pk)),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(JournalError::Table {
                path: self.location(pk),
                problem: format!("{marker} no longer points to this journal; it was closed by another runner"),
            }),
            Err(e) => Err(table_err(self.location(pk), "archiving")(error_text(&e))),
        }
    }
}
