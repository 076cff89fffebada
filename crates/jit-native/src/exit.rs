//! How a command ends, as a shell or a cluster scheduler reads it:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | failed while working (a backend error, a full disk, a diverged run) |
//! | 2 | refused: bad flags or files, a busy run folder, an output that exists; nothing was done |
//! | 128 + signal (130 Ctrl-C, 143 SIGTERM) | interrupted by a signal, after saving the step in flight |

use std::fmt;
use std::process::ExitCode;

/// Bad input (a flag, a file, a folder in use): nothing was done, and the message says what to
/// do instead. Exit code 2.
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A [`Refused`] error with this message.
pub fn refused(msg: impl Into<String>) -> anyhow::Error {
    Refused(msg.into()).into()
}

/// Returns early with a [`Refused`] error, formatted like `format!`.
#[macro_export]
macro_rules! refuse {
    ($($arg:tt)*) => { return Err($crate::exit::refused(format!($($arg)*))) };
}

/// A run stopped by `signal` after saving what it had done. Exit code 128 + signal.
#[derive(Debug)]
pub struct Interrupted {
    /// The signal's number (2: SIGINT, 15: SIGTERM).
    pub signal: i32,
    /// What was saved and how to continue.
    pub message: String,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

/// The exit code of a command that ended with `e`.
pub fn code(e: &anyhow::Error) -> i32 {
    if let Some(i) = e.downcast_ref::<Interrupted>() {
        (128 + i.signal).clamp(129, 255)
    } else if e.chain().any(|c| c.is::<Refused>() || c.is::<crate::regular::NotRegular>() || is_input_error(c)) {
        2
    } else {
        1
    }
}

/// The exit code and the line printed for a command's result.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else { return ExitCode::SUCCESS };
    match e.downcast_ref::<Interrupted>() {
        Some(i) => eprintln!("interrupted: {}", i.message),
        None => eprintln!("error: {e:#}"),
    }
    ExitCode::from(code(&e) as u8)
}

/// Core errors that describe the user's input (a config, a file) rather than a failure.
fn is_input_error(e: &(dyn std::error::Error + 'static)) -> bool {
    use jit_core::JitError as E;
    matches!(
        e.downcast_ref::<E>(),
        Some(
            E::InvalidConfig(_)
                | E::TooLarge { .. }
                | E::UnknownPreset(_)
                | E::NotACheckpoint(_)
                | E::MissingMetadata
                | E::BadMetadata(_)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_tell_done_refused_failed_and_interrupted_apart() {
        assert_eq!(report(Ok(())), ExitCode::SUCCESS);
        assert_eq!(report(Err(anyhow::anyhow!("disk full"))), ExitCode::FAILURE);
        assert_eq!(report(Err(refused("bad flag")).context("in train")), ExitCode::from(2));
        let cfg = jit_core::JitError::InvalidConfig("depth".into());
        assert_eq!(report(Err(anyhow::Error::from(cfg).context("in file"))), ExitCode::from(2));
        let term = Interrupted { signal: 15, message: "saved".into() };
        assert_eq!(report(Err(term.into())), ExitCode::from(143));
    }
}
