//! A status line for long waits: redrawn in place when stderr is a terminal, otherwise a log line
//! at most every 15 s so that CI logs show the wait without drowning in it.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Progress {
    terminal: bool,
    enabled: bool,
    last_log: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Progress { terminal, enabled: true, last_log: Mutex::new(None) }
    }

    pub fn off() -> Self {
        Progress { terminal: false, enabled: false, last_log: Mutex::new(None) }
    }

    pub fn is_terminal(&self) -> bool {
        self.enabled && self.terminal
    }

    pub fn update(&self, line: &str) {
        if !self.enabled {
            return;
        }
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K  {line}");
            let _ = err.flush();
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(15)) {
            *last = Some(Instant::now());
            tracing::info!("{line}");
        }
    }

    /// End the status line so that the next output starts on a clean line.
    pub fn done(&self) {
        if self.enabled && self.terminal {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
        *self.last_log.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
