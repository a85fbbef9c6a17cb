//! Who drives a rotation right now. A journal has one owner for as long as the process driving it
//! lives: the rotation that started it, or the `resume` that took it over once that one was gone.
//! Anyone else (`resume`, `resume --rollback`, a second `rotate`) is refused before it changes
//! anything, and told which process holds the journal.
//!
//! The local journal's owner holds an exclusive `flock` on the journal file (the kernel drops it
//! when the process dies, however it dies); the shared journal's owner holds a lease in the
//! table's marker item, renewed while it runs (see `dynamodb.rs`). Either way the owner is named by
//! pid, host and the time it took the journal.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A process that holds a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub host: String,
    /// When it took the journal (RFC 3339).
    pub since: String,
    /// The process's start in clock ticks after boot (`/proc/<pid>/stat`), which tells a live
    /// owner from a later process that got the same pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_start: Option<u64>,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on host {}, since {}", self.pid, self.host, self.since)
    }
}

impl Owner {
    /// This process, taking a journal now.
    pub fn me(now: SystemTime) -> Owner {
        let pid = std::process::id();
        Owner { pid, host: host_name(), since: rekey_trail::time::format(now), proc_start: proc_start(pid) }
    }

    /// Whether the owner still runs, when that can be told from here (same host); `None` from
    /// another host, where only the lease can tell.
    pub fn alive_here(&self) -> Option<bool> {
        if self.host != host_name() {
            return None;
        }
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let exists = unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !exists {
            return Some(false);
        }
        match (self.proc_start, proc_start(self.pid)) {
            // The pid was reused by a process that started later.
            (Some(recorded), Some(now)) => Some(recorded == now),
            _ => Some(true),
        }
    }
}

/// The owner for a message: who, or that it cannot be told.
pub fn describe(owner: Option<&Owner>) -> String {
    match owner {
        Some(o) => o.to_string(),
        None => "by a process that has not named itself yet".into(),
    }
}

/// The host name as the kernel has it (the container's own, in a container).
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()))
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Field 22 of `/proc/<pid>/stat`, read after the command name (which may hold spaces).
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

pub(super) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_or_reused_pid_is_not() {
        let me = Owner::me(SystemTime::now());
        assert_eq!(me.alive_here(), Some(true));
        assert!(me.proc_start.is_some(), "Linux has /proc");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let gone = Owner { pid, ..me.clone() };
        assert_eq!(gone.alive_here(), Some(false));
        let reused = Owner { pid: std::process::id(), proc_start: me.proc_start.map(|s| s + 1), ..me.clone() };
        assert_eq!(reused.alive_here(), Some(false));
        let elsewhere = Owner { host: "another-host".into(), ..me };
        assert_eq!(elsewhere.alive_here(), None);
    }
}
