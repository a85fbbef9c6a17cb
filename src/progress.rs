//! A status line for long waits (a key's propagation, an ECS rollout, a grace period): a spinner
//! with the elapsed time when stderr is a terminal, drawn by indicatif as `rekey trace`'s progress
//! is; otherwise a log line at most every 15 s, so that CI logs show the wait without drowning in it.
//!
//! Every status line of the process hangs off one [`MultiProgress`], and log lines are written
//! through [`AboveStatusLines`], which lifts the status lines while a log line goes out: a warning
//! in the middle of a wait then reads as a line of its own, not glued to the spinner.

use std::io::Write;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The process's status lines. indicatif draws nothing when stderr is not a terminal.
static STATUS_LINES: LazyLock<MultiProgress> =
    LazyLock::new(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8)));

/// Show `bar` on stderr with the process's other status lines, below the log.
pub fn status_line(bar: ProgressBar) -> ProgressBar {
    STATUS_LINES.add(bar)
}

/// Take `bar` off the terminal for good.
pub fn end_status_line(bar: &ProgressBar) {
    bar.finish_and_clear();
    STATUS_LINES.remove(bar);
}

/// Run `write` (to stdout or stderr) with the status lines lifted off the terminal, then redraw
/// them: what is written lands on lines of its own.
pub fn above_status_lines<R>(write: impl FnOnce() -> R) -> R {
    STATUS_LINES.suspend(write)
}

/// stderr for the log: each write lifts the status lines, writes, and redraws them.
pub struct AboveStatusLines;

impl Write for AboveStatusLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        above_status_lines(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

pub struct Progress {
    terminal: bool,
    enabled: bool,
    /// The spinner of the wait in progress, on a terminal.
    line: Mutex<Option<ProgressBar>>,
    last_log: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new(terminal: bool) -> Self {
        Progress { terminal, enabled: true, line: Mutex::new(None), last_log: Mutex::new(None) }
    }

    pub fn off() -> Self {
        Progress { terminal: false, enabled: false, line: Mutex::new(None), last_log: Mutex::new(None) }
    }

    pub fn is_terminal(&self) -> bool {
        self.enabled && self.terminal
    }

    pub fn update(&self, line: &str) {
        if !self.enabled {
            return;
        }
        if self.terminal {
            let mut current = self.line.lock().unwrap_or_else(|p| p.into_inner());
            match current.as_ref() {
                Some(bar) => bar.set_message(line.to_string()),
                None => {
                    let style = ProgressStyle::with_template("  {spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                    // Styled and filled in before it is shown, so that its first drawing is whole.
                    let bar = status_line(ProgressBar::new_spinner().with_style(style).with_message(line.to_string()));
                    // Turning between updates shows the wait is alive when a check takes seconds.
                    bar.enable_steady_tick(Duration::from_millis(120));
                    *current = Some(bar);
                }
            }
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
        if let Some(bar) = self.line.lock().unwrap_or_else(|p| p.into_inner()).take() {
            end_status_line(&bar);
        }
        *self.last_log.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl Drop for Progress {
    // A wait cut short by an error still leaves the terminal on a clean line for its message.
    fn drop(&mut self) {
        self.done();
    }
}

/// Targets' waits (an ECS rollout) draw on the same kind of line as the rotation's own.
impl rekey_adapters::WaitStatus for Progress {
    fn update(&self, line: &str) {
        Progress::update(self, line);
    }

    fn done(&self) {
        Progress::done(self);
    }
}
