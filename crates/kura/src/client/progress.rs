//! Progress bars for transfers (indicatif, on stderr): one bar per blob while it moves, with
//! bytes, rate and time left, and a closing status per blob like docker's (`Pushed`,
//! `Already exists`, `Mounted`). Drawn only on a terminal; otherwise nothing is drawn.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kura_client::transfer::{BlobOutcome, Progress};
use kura_oci::Digest;

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    /// "Pushed", "Downloaded", "Copied".
    verb: &'static str,
}

impl Bars {
    pub fn new(verb: &'static str) -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            bars: Mutex::new(HashMap::new()),
            verb,
        }
    }

    fn bar(&self, digest: &Digest) -> Option<ProgressBar> {
        self.bars.lock().expect("bars lock").get(digest).cloned()
    }
}

fn short(d: &Digest) -> String {
    d.hex().chars().take(12).collect()
}

impl Progress for Bars {
    fn blob_started(&self, digest: &Digest, size: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix}: {msg:<11} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} \
                 {binary_bytes_per_sec:>12} {eta:>4}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(short(digest));
        bar.set_message(match self.verb {
            "Downloaded" => "Downloading",
            "Pushed" => "Pushing",
            _ => "Copying",
        });
        bar.enable_steady_tick(Duration::from_millis(200));
        self.bars
            .lock()
            .expect("bars lock")
            .insert(digest.clone(), bar);
    }

    fn blob_advanced(&self, digest: &Digest, bytes: u64) {
        if let Some(b) = self.bar(digest) {
            b.inc(bytes);
        }
    }

    fn blob_reset(&self, digest: &Digest, offset: u64) {
        if let Some(b) = self.bar(digest) {
            b.set_position(offset);
            b.set_message("Resuming");
        }
    }

    fn blob_done(&self, digest: &Digest, outcome: BlobOutcome) {
        let text = match outcome {
            BlobOutcome::Copied => self.verb,
            BlobOutcome::AlreadyThere => "Already exists",
            BlobOutcome::Mounted => "Mounted",
        };
        match self.bars.lock().expect("bars lock").remove(digest) {
            Some(b) => {
                b.set_style(ProgressStyle::with_template("{prefix}: {msg}").expect("template"));
                b.finish_with_message(text.to_string());
            }
            None => {
                let _ = self.multi.println(format!("{}: {text}", short(digest)));
            }
        }
    }
}
