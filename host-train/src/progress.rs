//! Progress bars on a terminal, nothing otherwise (indicatif hides them when stderr is not
//! a TTY, so logs and CI output stay clean).

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(len: u64, what: &str) -> Self {
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Self(bar)
    }

    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
