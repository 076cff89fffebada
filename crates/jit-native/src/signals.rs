//! Stopping a run cleanly on Ctrl-C (SIGINT), SIGTERM (`kill`, `timeout`, SLURM's preemption)
//! and, on Unix, SIGQUIT: the first asks the loop to save the step in flight and stop; another
//! one a second or more later exits at once (checkpoints are written atomically, so nothing
//! saved is lost). Repeats within the second are one request: `timeout` and process managers
//! signal the process and then its group.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::TERM_SIGNALS;

/// The signal that asked the run to stop, if one did.
#[derive(Clone)]
pub struct StopRequest {
    signal: Arc<AtomicUsize>,
}

impl StopRequest {
    /// The number of the first stop signal received (2: SIGINT, 15: SIGTERM), if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

/// Installs the handlers; a warning (and no clean stop) where the OS refuses them. With
/// `grace`, a run whose step in flight has not ended that long after the first signal (a
/// data-parallel rank waiting for one that died) exits without saving it.
pub fn stop_on_signal(grace: Option<Duration>) -> StopRequest {
    let first = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicUsize::new(0));
    for &sig in TERM_SIGNALS {
        let registered = signal_hook::flag::register_usize(sig, last.clone(), sig as usize)
            .and_then(|_| signal_hook::flag::register(sig, arrived.clone()));
        if let Err(e) = registered {
            eprintln!("warning: signal {sig} will stop training without saving ({e})");
        }
    }
    let request = StopRequest { signal: first.clone() };
    // Signal handlers may only set flags; this thread turns them into messages and exits.
    std::thread::spawn(move || {
        let mut since: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            if let (Some(at), Some(grace)) = (since, grace)
                && at.elapsed() >= grace
            {
                let sig = first.load(Ordering::SeqCst) as i32;
                eprintln!(
                    "\nthe step in flight did not end within {}s of signal {sig} (another process of the run may be gone); exiting without saving it",
                    grace.as_secs()
                );
                std::process::exit(128 + sig);
            }
            if !arrived.swap(false, Ordering::SeqCst) {
                continue;
            }
            let sig = last.load(Ordering::SeqCst);
            match since {
                None => {
                    since = Some(Instant::now());
                    first.store(sig, Ordering::SeqCst);
                    eprintln!("\nsignal {sig}: finishing this step and saving a checkpoint (Ctrl-C again to quit now)");
                }
                Some(at) if at.elapsed() >= Duration::from_secs(1) => {
                    eprintln!("\nsignal {sig} again: exiting without saving the current step");
                    std::process::exit(128 + sig as i32);
                }
                Some(_) => {}
            }
        }
    });
    request
}
