//! Progress for long transfers: a bar with bytes, rate and ETA when stderr is a terminal; one
//! plain line per finished object otherwise (logs, CI). Summaries go to stdout.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    /// Prints nothing (the server's scheduled prefetch logs through `tracing` instead).
    quiet: bool,
}

impl Progress {
    /// A progress display for `total` bytes (grow it with `add_total`).
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            quiet: false,
        }
    }

    /// No bar and no lines.
    pub fn quiet() -> Progress {
        Progress {
            bar: None,
            started: Instant::now(),
            quiet: true,
        }
    }

    pub fn add_total(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc_length(n);
        }
    }

    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A handle that advances the bar from a stream that outlives this borrow.
    pub fn ticker(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |n| {
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
    }

    /// What is being worked on now (the bar's message).
    pub fn message(&self, m: &str) {
        if let Some(b) = &self.bar {
            b.set_message(m.to_string());
        }
    }

    /// One finished object: a plain line without a terminal, nothing with one (the bar moves).
    pub fn done(&self, line: &str) {
        if self.bar.is_none() && !self.quiet {
            eprintln!("{line}");
        }
    }

    /// A line shown in both modes (warnings, failures).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None if self.quiet => {}
            None => eprintln!("{line}"),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

/// `45.6 MiB/s` over `d`.
pub fn rate(n: u64, d: Duration) -> String {
    let secs = d.as_secs_f64().max(0.001);
    format!("{}/s", HumanBytes((n as f64 / secs) as u64))
}
