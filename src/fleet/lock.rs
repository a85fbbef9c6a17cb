//! One lock per (account, user), so that two `rekey run`s never rotate one user at the same time.
//!
//! With `[lock]` in the config the locks live in a DynamoDB table and hold across machines. The
//! table is not created by rekey (its owner decides capacity, encryption and who may write):
//!
//! - partition key `pk`, type String, no sort key;
//! - optional: TTL on the attribute `ttl` (epoch seconds), which only tidies up expired items.
//!
//! An item is `{pk: "<account>/<user>", owner, expires_at (epoch ms), ttl (epoch s), acquired_at}`.
//! Taking the lock is a conditional `PutItem` that succeeds only when no item exists or the item has
//! expired, so a runner that crashed blocks that user for `ttl` at most; releasing is a conditional
//! `DeleteItem` that succeeds only for the owner, so a runner whose lock expired and was taken over
//! cannot free the new holder's lock.
//!
//! Without `[lock]`, an exclusive `flock` on a file under the state folder serves one machine; the
//! kernel drops it when the process dies, so it needs no expiry.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::aws::error_text;

/// Who holds a lock that could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub until: Option<SystemTime>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "locked by {}", self.owner)?;
        match self.until {
            Some(t) => write!(f, " until {}", rekey_trail::time::format(t)),
            None => Ok(()),
        }
    }
}

/// A lock held; give it back with [`UserLock::release`].
#[derive(Debug)]
pub struct Guard {
    pub key: String,
    pub owner: String,
    /// The file whose `flock` is the lock, for the local implementation.
    file: Option<File>,
}

#[derive(Debug)]
pub enum Acquired {
    Got(Guard),
    Held(Holder),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LockError(pub String);

#[async_trait]
pub trait UserLock: Send + Sync {
    async fn acquire(&self, account: &str, user: &str, owner: &str, ttl: Duration) -> Result<Acquired, LockError>;
    async fn release(&self, guard: Guard) -> Result<(), LockError>;
}

fn lock_key(account: &str, user: &str) -> String {
    format!("{account}/{user}")
}

/// Names this runner in lock items and messages: host, process and start time, so that a second
/// run on the same host is still a different owner.
pub fn owner_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    format!("{host}/pid-{}/{nanos:09}", std::process::id())
}

fn epoch_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default()
}

pub struct DynamoDbLock {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoDbLock {
    pub fn new(sdk: &aws_types::SdkConfig, table: &str) -> Self {
        DynamoDbLock { client: aws_sdk_dynamodb::Client::new(sdk), table: table.to_string() }
    }

    /// Fails when the table is missing or unreadable, before any rotation starts.
    pub async fn check_table(&self) -> Result<(), LockError> {
        match self.client.describe_table().table_name(&self.table).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Err(LockError(format!(
                "the lock table {} does not exist; create it (partition key pk, type String) or remove [lock] from the config",
                self.table
            ))),
            Err(e) => Err(LockError(format!("cannot read the lock table {}: {}", self.table, error_text(&e)))),
        }
    }

    async fn holder(&self, key: &str) -> Result<Option<Holder>, LockError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.to_string()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| LockError(format!("reading lock {key}: {}", error_text(&e))))?;
        Ok(out.item().map(holder_of))
    }
}

fn holder_of(item: &HashMap<String, AttributeValue>) -> Holder {
    let owner = item.get("owner").and_then(|v| v.as_s().ok()).cloned().unwrap_or_else(|| "an unknown owner".into());
    let until = item
        .get("expires_at")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse::<u64>().ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    Holder { owner, until }
}

#[async_trait]
impl UserLock for DynamoDbLock {
    async fn acquire(&self, account: &str, user: &str, owner: &str, ttl: Duration) -> Result<Acquired, LockError> {
        let key = lock_key(account, user);
        // The holder may release between our failed put and our read: then try again.
        for _ in 0..3 {
            let now = SystemTime::now();
            let expires = now + ttl;
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", AttributeValue::S(key.clone()))
                .item("owner", AttributeValue::S(owner.to_string()))
                .item("expires_at", AttributeValue::N(epoch_ms(expires).to_string()))
                .item("ttl", AttributeValue::N((epoch_ms(expires) / 1000 + 1).to_string()))
                .item("acquired_at", AttributeValue::S(rekey_trail::time::format(now)))
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", AttributeValue::N(epoch_ms(now).to_string()))
                .send()
                .await;
            match put {
                Ok(_) => return Ok(Acquired::Got(Guard { key, owner: owner.to_string(), file: None })),
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                    if let Some(h) = self.holder(&key).await? {
                        return Ok(Acquired::Held(h));
                    }
                }
                Err(e) => {
                    return Err(LockError(format!("taking lock {key} in {}: {}", self.table, error_text(&e))));
                }
            }
        }
        Err(LockError(format!("lock {key} in {} changed hands three times while being taken", self.table)))
    }

    async fn release(&self, guard: Guard) -> Result<(), LockError> {
        // `owner` is a DynamoDB reserved word.
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(guard.key.clone()))
            .condition_expression("#o = :me")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":me", AttributeValue::S(guard.owner.clone()))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            // Expired and taken over (or removed by hand): it is no longer ours to delete.
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(LockError(format!("releasing lock {}: {}", guard.key, error_text(&e)))),
        }
    }
}

/// One machine: `flock` on `<state dir>/locks/<account>.<user>.lock`.
pub struct FileLock {
    dir: PathBuf,
}

impl FileLock {
    pub fn new(state_dir: &std::path::Path) -> Self {
        FileLock { dir: state_dir.join("locks") }
    }
}

#[async_trait]
impl UserLock for FileLock {
    async fn acquire(&self, account: &str, user: &str, owner: &str, ttl: Duration) -> Result<Acquired, LockError> {
        let io = |e: std::io::Error| LockError(format!("lock file in {}: {e}", self.dir.display()));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).map_err(io)?;
        // IAM user names are [\w+=,.@-]: safe as file names.
        let path = self.dir.join(format!("{account}.{user}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {
                let until = rekey_trail::time::format(SystemTime::now() + ttl);
                file.set_len(0).map_err(io)?;
                file.write_all(format!("{owner}\n{until}\n").as_bytes()).map_err(io)?;
                Ok(Acquired::Got(Guard { key: lock_key(account, user), owner: owner.to_string(), file: Some(file) }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
                let mut lines = text.lines();
                let owner = lines.next().filter(|l| !l.is_empty()).unwrap_or("another rekey on this machine");
                let until = lines.next().and_then(rekey_trail::time::parse);
                Ok(Acquired::Held(Holder { owner: owner.to_string(), until }))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    async fn release(&self, guard: Guard) -> Result<(), LockError> {
        if let Some(f) = guard.file {
            let _ = f.set_len(0);
            let _ = f.unlock();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (FileLock::new(dir.path()), FileLock::new(dir.path()));
        let ttl = Duration::from_secs(60);
        let Acquired::Got(g) = a.acquire("1", "alice", "runner-a", ttl).await.unwrap() else { panic!("free") };
        match b.acquire("1", "alice", "runner-b", ttl).await.unwrap() {
            Acquired::Held(h) => {
                assert_eq!(h.owner, "runner-a");
                assert!(h.until.is_some());
            }
            Acquired::Got(_) => panic!("taken twice"),
        }
        assert!(matches!(b.acquire("1", "bob", "runner-b", ttl).await.unwrap(), Acquired::Got(_)));
        a.release(g).await.unwrap();
        assert!(matches!(b.acquire("1", "alice", "runner-b", ttl).await.unwrap(), Acquired::Got(_)));
    }
}
