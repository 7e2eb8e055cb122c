//! Live progress on stderr: one bar per scenario with its request rate and p99.
//!
//! Drawn only when stderr is a terminal, so piped output and `--json` consumers see
//! nothing but results on stdout.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::measure::Live;
use crate::report::{ScenarioResult, fmt_ms};

/// The set of scenario bars of one run.
#[derive(Debug)]
pub(crate) struct Progress {
    multi: MultiProgress,
    visible: bool,
}

impl Progress {
    /// Draws to stderr when it is a terminal, and nowhere otherwise.
    pub(crate) fn new() -> Self {
        let visible = std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress {
            multi: MultiProgress::with_draw_target(target),
            visible,
        }
    }

    /// Whether anything is drawn (callers skip computing live figures otherwise).
    pub(crate) fn visible(&self) -> bool {
        self.visible
    }

    /// Adds the bar of one scenario.
    pub(crate) fn scenario(&self, label: &str) -> ScenarioBar {
        let style = ProgressStyle::with_template("{prefix:<28} {spinner} [{bar:24}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = self.multi.add(ProgressBar::new(1).with_style(style));
        bar.set_prefix(label.to_owned());
        if self.visible {
            // Keeps the spinner moving between the 200 ms figure updates.
            bar.enable_steady_tick(Duration::from_millis(100));
        }
        ScenarioBar { bar }
    }

    /// Prints a line above the bars (or to stderr when no bars are drawn).
    pub(crate) fn note(&self, line: &str) {
        if self.visible {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

/// One scenario's bar; its length is the current phase's duration in milliseconds.
#[derive(Debug)]
pub(crate) struct ScenarioBar {
    bar: ProgressBar,
}

impl ScenarioBar {
    /// Starts a phase ("warm-up", "measuring", …) of `length`.
    pub(crate) fn phase(&self, name: &str, length: Duration) {
        self.bar.set_length(length.as_millis().max(1) as u64);
        self.bar.set_position(0);
        self.bar.set_message(name.to_owned());
    }

    /// Shows live figures.
    pub(crate) fn tick(&self, phase: &str, live: &Live) {
        let secs = live.elapsed.as_secs_f64().max(1e-3);
        self.bar.set_position(live.elapsed.as_millis() as u64);
        self.bar.set_message(format!(
            "{phase}: {:>9.1} req/s  p99 {:>9} ms  errors {}",
            live.requests as f64 / secs,
            fmt_ms(live.p99_us),
            live.errors
        ));
    }

    /// Replaces the bar with the scenario's final figures.
    pub(crate) fn finish(&self, r: &ScenarioResult) {
        self.bar.finish_with_message(format!(
            "done: {:>9.1} req/s  p99 {:>9} ms  errors {}",
            r.throughput_rps,
            fmt_ms(r.latency_us.p99),
            r.errors.total()
        ));
    }

    /// Replaces the bar with a final line.
    pub(crate) fn done(&self, message: &str) {
        self.bar.finish_with_message(format!("done: {message}"));
    }

    /// Leaves the bar with an error message.
    pub(crate) fn abandon(&self, why: &str) {
        self.bar.abandon_with_message(why.to_owned());
    }
}
