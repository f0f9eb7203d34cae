//! The progress bar of long image commands (`-p`, as qemu-img's): on stderr, and
//! drawn only when stderr is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar labelled `verb` (as "converting"), or none without `-p`.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn new(enabled: bool, verb: &str) -> Self {
        Progress(enabled.then(|| {
            let bar = ProgressBar::new(0);
            bar.set_draw_target(ProgressDrawTarget::stderr());
            let template =
                format!("{verb} {{bar:30}} {{percent}}% {{bytes}}/{{total_bytes}} eta {{eta}}");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        }))
    }

    /// For the library's progress callbacks: `done` of `total` bytes.
    pub fn report(&self, done: u64, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
            bar.set_position(done);
        }
    }
}

impl Drop for Progress {
    /// Success or error, the bar leaves no line behind.
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
