//! Journals in a DynamoDB table, for runners whose disk does not outlive them (see the module
//! note of [`super`] for the items it holds and the conditional writes that keep one writer).
//!
//! The marker item also names the journal's owner and holds its lease: `owner_token` (unique to
//! one process's hold), `owner` (pid, host, since, as JSON) and `lease_until` (epoch ms). The
//! owner renews the lease every [`RENEW_EVERY`] while it runs; another process takes the journal
//! over only when the lease has run out, or when the owner is on the same host and no longer
//! exists, and only with a conditional update on the token and lease it saw, so that of two
//! `resume`s one wins and the other stops before any side effect. An owner whose lease was taken
//! over writes no further record.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::aws::error_text;

use super::owner::epoch_ms;
use super::{
    Begin, Event, Journal, JournalError, Owner, Record, Running, Sink, State, Unfinished, crash_after_from_env, fold,
};

/// How long a lease lasts without renewal: how long a crashed owner on another host blocks
/// `resume` at most.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often a running owner renews its lease: a few renewals may fail before it lapses.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// This process's hold on a journal's marker, renewed in the background until dropped.
pub(crate) struct Lease {
    token: String,
    /// Set once another process took the journal over.
    lost: Arc<Mutex<Option<String>>>,
    /// Until when (epoch ms) the lease is known to be ours: the end of the last renewal that
    /// succeeded. Past it, another host may have taken the journal over.
    valid_until: Arc<std::sync::atomic::AtomicU64>,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// No hold yet: a journal whose marker is not written.
    fn none() -> Lease {
        Lease {
            token: String::new(),
            lost: Arc::new(Mutex::new(None)),
            valid_until: Arc::new(u64::MAX.into()),
            renewal: tokio::spawn(async {}),
        }
    }

    /// Why this process may no longer write the journal, if it may not: taken over, or not
    /// renewed in time (then another host may have taken it over).
    pub(super) fn lost(&self) -> Option<String> {
        if let Some(why) = self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(why);
        }
        let until = self.valid_until.load(std::sync::atomic::Ordering::SeqCst);
        (epoch_ms(SystemTime::now()) > until).then(|| {
            "this process's lease on the journal ran out (its renewals failed), so another runner may drive the rotation now; this one writes nothing more".to_string()
        })
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

/// The marker of an unfinished journal, as read.
struct Marker {
    /// The records' `pk`.
    journal: String,
    owner: Option<Owner>,
    token: Option<String>,
    lease_until: Option<u64>,
}

impl Marker {
    fn from_item(item: &HashMap<String, AttributeValue>) -> Option<Marker> {
        let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        Some(Marker {
            journal: s("journal")?,
            owner: s("owner").and_then(|o| serde_json::from_str(&o).ok()),
            token: s("owner_token"),
            lease_until: item.get("lease_until").and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()),
        })
    }

    /// The process that holds the journal now, if any: a live lease whose owner is not known to
    /// be gone.
    fn running(&self, now: SystemTime) -> Option<Running> {
        let live = self.token.is_some() && self.lease_until.is_some_and(|u| u > epoch_ms(now));
        let gone = self.owner.as_ref().and_then(Owner::alive_here) == Some(false);
        (live && !gone).then(|| Running { owner: self.owner.clone() })
    }
}

fn new_token(owner: &Owner) -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    format!("{}/{}/{nanos}", owner.host, owner.pid)
}

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

    /// The marker of the unfinished journal of `user`, if there is one.
    async fn marker(&self, user: &str) -> Result<Option<Marker>, JournalError> {
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
        Ok(out.item().and_then(Marker::from_item))
    }

    /// Why a new rotation of `user` cannot start, if it cannot.
    pub(super) async fn vacant(&self, user: &str) -> Result<(), JournalError> {
        match self.marker(user).await? {
            None => Ok(()),
            Some(m) => Err(self.taken(user, &m)),
        }
    }

    fn taken(&self, user: &str, m: &Marker) -> JournalError {
        let path = self.location(&m.journal);
        match m.running(SystemTime::now()) {
            Some(r) => JournalError::Running { user: user.into(), path, owner: r.owner },
            None => JournalError::Unfinished { user: user.into(), path },
        }
    }

    /// Keep renewing the lease `token` holds on `user`'s marker until dropped, or until another
    /// process has taken it.
    fn hold(&self, user: &str, token: String) -> Lease {
        let lost = Arc::new(Mutex::new(None));
        // A little short of the lease written, for the clock that passes while the write travels.
        let valid_until = Arc::new(std::sync::atomic::AtomicU64::new(epoch_ms(SystemTime::now() + LEASE) - 2_000));
        let (store, marker, flag, me) = (self.clone(), self.marker_pk(user), lost.clone(), token.clone());
        let valid = valid_until.clone();
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                let sent = SystemTime::now();
                let until = epoch_ms(sent + LEASE);
                let out = store
                    .client
                    .update_item()
                    .table_name(&store.table)
                    .key("pk", AttributeValue::S(marker.clone()))
                    .key("sk", AttributeValue::N("0".into()))
                    .update_expression("SET lease_until = :u")
                    .condition_expression("owner_token = :me")
                    .expression_attribute_values(":u", AttributeValue::N(until.to_string()))
                    .expression_attribute_values(":me", AttributeValue::S(me.clone()))
                    .send()
                    .await;
                match out {
                    Ok(_) => valid.store(until - 2_000, std::sync::atomic::Ordering::SeqCst),
                    Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                        let taker = store.marker_owner(&marker).await;
                        *flag.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                            "another process took this rotation over ({taker}) while this one was thought gone; it drives the rotation now, and this one writes nothing more"
                        ));
                        return;
                    }
                    // Tried again at the next tick; the lease outlasts a few failures.
                    Err(e) => tracing::warn!("renewing the lease on {marker}: {}", error_text(&e)),
                }
            }
        });
        Lease { token, lost, valid_until, renewal }
    }

    async fn marker_owner(&self, marker_pk: &str) -> String {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(marker_pk.to_string()))
            .key("sk", AttributeValue::N("0".into()))
            .consistent_read(true)
            .send()
            .await;
        let owner = out.ok().and_then(|o| o.item().and_then(Marker::from_item)).and_then(|m| m.owner);
        super::owner::describe(owner.as_ref())
    }

    pub(super) async fn create(&self, begin: Begin, now: SystemTime) -> Result<Journal, JournalError> {
        let user = begin.user.clone();
        let pk = format!("journal#{}/{user}/{}", self.account, begin.rotation_id);
        let mut journal = Journal {
            path: self.location(&pk),
            // Not renewed until the marker is ours.
            sink: Sink::Table { store: self.clone(), pk: pk.clone(), lease: Lease::none() },
            next_seq: 1,
            state: State::new(begin.clone()),
            crash_after: crash_after_from_env(),
        };
        // The first record goes in before the marker, so that a marker always points to a journal
        // that can be read: records without a marker (a crash in between) are only an orphan.
        let record = journal.next_record(Event::Begin(begin), now);
        journal.append(&record).await?;
        let marker = self.marker_pk(&user);
        let owner = Owner::me(SystemTime::now());
        let token = new_token(&owner);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(marker.clone()))
            .item("sk", AttributeValue::N("0".into()))
            .item("journal", AttributeValue::S(pk.clone()))
            .item("user", AttributeValue::S(user.clone()))
            .item("account", AttributeValue::S(self.account.clone()))
            .item("started_at", AttributeValue::S(rekey_trail::time::format(now)))
            .item("owner", AttributeValue::S(serde_json::to_string(&owner).expect("owner serializes")))
            .item("owner_token", AttributeValue::S(token.clone()))
            .item("lease_until", AttributeValue::N(epoch_ms(SystemTime::now() + LEASE).to_string()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                return Err(match self.marker(&user).await {
                    Ok(Some(m)) => self.taken(&user, &m),
                    _ => JournalError::Unfinished { user, path: self.location(&marker) },
                });
            }
            Err(e) => return Err(table_err(self.location(&marker), "starting")(error_text(&e))),
        }
        if let Sink::Table { lease, .. } = &mut journal.sink {
            *lease = self.hold(&user, token);
        }
        journal.applied(record)?;
        Ok(journal)
    }

    /// Take over the unfinished journal of `user`: refused while its owner's lease is live, and
    /// taken with a conditional update on the lease as it was read, so two takers cannot both win.
    pub(super) async fn open(&self, user: &str) -> Result<Option<Journal>, JournalError> {
        let Some(m) = self.marker(user).await? else { return Ok(None) };
        if m.running(SystemTime::now()).is_some() {
            return Err(self.taken(user, &m));
        }
        let me = Owner::me(SystemTime::now());
        let token = new_token(&me);
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(self.marker_pk(user)))
            .key("sk", AttributeValue::N("0".into()))
            .update_expression("SET #o = :o, owner_token = :t, lease_until = :u")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#j", "journal")
            .expression_attribute_values(":o", AttributeValue::S(serde_json::to_string(&me).expect("owner serializes")))
            .expression_attribute_values(":t", AttributeValue::S(token.clone()))
            .expression_attribute_values(":u", AttributeValue::N(epoch_ms(SystemTime::now() + LEASE).to_string()))
            .expression_attribute_values(":j", AttributeValue::S(m.journal.clone()));
        update = match (&m.token, m.lease_until) {
            (Some(seen), Some(until)) => update
                .condition_expression("#j = :j AND owner_token = :seen AND lease_until = :until")
                .expression_attribute_values(":seen", AttributeValue::S(seen.clone()))
                .expression_attribute_values(":until", AttributeValue::N(until.to_string())),
            // A marker written before owners were recorded.
            _ => update.condition_expression("#j = :j AND attribute_not_exists(owner_token)"),
        };
        match update.send().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                // Renewed, taken by another `resume`, or closed, since it was read.
                return match self.marker(user).await? {
                    Some(now) => Err(self.taken(user, &now)),
                    None => Ok(None),
                };
            }
            Err(e) => return Err(table_err(self.location(&m.journal), "taking over")(error_text(&e))),
        }
        let lease = self.hold(user, token);
        let (state, next_seq) = self.load(&m.journal).await?;
        Ok(Some(Journal {
            path: self.location(&m.journal),
            sink: Sink::Table { store: self.clone(), pk: m.journal, lease },
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

    pub(super) async fn list_unfinished(&self) -> Result<Vec<Unfinished>, JournalError> {
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
            journals.extend(out.items().iter().filter_map(Marker::from_item));
            start = out.last_evaluated_key().cloned();
            if start.is_none() {
                break;
            }
        }
        journals.sort_by(|a, b| a.journal.cmp(&b.journal));
        let mut out = Vec::new();
        let now = SystemTime::now();
        for m in journals {
            let (state, _) = self.load(&m.journal).await?;
            out.push(Unfinished { path: self.location(&m.journal), state, running: m.running(now) });
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

    pub(super) async fn archive(&self, pk: &str, user: &str, lease: &Lease) -> Result<PathBuf, JournalError> {
        let marker = self.marker_pk(user);
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(marker.clone()))
            .key("sk", AttributeValue::N("0".into()))
            .condition_expression("#j = :j AND owner_token = :me")
            .expression_attribute_names("#j", "journal")
            .expression_attribute_values(":j", AttributeValue::S(pk.to_string()))
            .expression_attribute_values(":me", AttributeValue::S(lease.token.clone()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(self.location(pk)),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(JournalError::Table {
                path: self.location(pk),
                problem: format!(
                    "{marker} no longer points to this journal, or another process took it over; it was closed or is driven by another runner"
                ),
            }),
            Err(e) => Err(table_err(self.location(pk), "archiving")(error_text(&e))),
        }
    }

    /// End this process's lease now, for a journal left unfinished: `resume` may take it at once.
    pub(super) async fn release(&self, pk: &str, user: &str, lease: &Lease) -> Result<(), JournalError> {
        lease.renewal.abort();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(self.marker_pk(user)))
            .key("sk", AttributeValue::N("0".into()))
            .update_expression("SET lease_until = :zero")
            .condition_expression("owner_token = :me")
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":me", AttributeValue::S(lease.token.clone()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            // Not ours any more: nothing to give up.
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(table_err(self.location(pk), "releasing")(error_text(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(owner: Owner, lease_until: u64) -> Marker {
        Marker {
            journal: "journal#1/app/x".into(),
            owner: Some(owner),
            token: Some("t".into()),
            lease_until: Some(lease_until),
        }
    }

    #[test]
    fn a_marker_is_running_while_its_lease_is_live_and_its_owner_is_not_known_to_be_gone() {
        let now = SystemTime::now();
        let live = epoch_ms(now + LEASE);
        let me = Owner::me(now);
        assert!(marker(me.clone(), live).running(now).is_some(), "a live owner on this host");
        assert!(marker(me.clone(), epoch_ms(now) - 1).running(now).is_none(), "the lease ran out");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = Owner { pid: child.id(), ..me.clone() };
        child.wait().unwrap();
        assert!(marker(gone, live).running(now).is_none(), "its process is gone from this host");
        let elsewhere = Owner { host: "another-host".into(), pid: 1, ..me.clone() };
        assert!(marker(elsewhere, live).running(now).is_some(), "only the lease tells, from another host");
        let old = Marker { owner: None, token: None, lease_until: None, ..marker(me, live) };
        assert!(old.running(now).is_none(), "a marker from before owners were recorded");
    }

    #[tokio::test]
    async fn a_lease_not_renewed_in_time_or_taken_over_forbids_further_records() {
        let lease = |valid_until: u64| Lease {
            token: "t".into(),
            lost: Arc::new(Mutex::new(None)),
            valid_until: Arc::new(valid_until.into()),
            renewal: tokio::spawn(async {}),
        };
        assert_eq!(lease(epoch_ms(SystemTime::now() + LEASE)).lost(), None);
        assert!(lease(epoch_ms(SystemTime::now()) - 1).lost().unwrap().contains("ran out"));
        let taken = lease(u64::MAX);
        *taken.lost.lock().unwrap() = Some("another process took this rotation over".into());
        assert!(taken.lost().unwrap().contains("took this rotation over"));
    }
}
