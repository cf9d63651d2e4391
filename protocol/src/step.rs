//! [`StepError`]: what was being done when something failed, and the error that stopped it.
//!
//! The runtime's and the node kit's internal failures (a part that would not start, a link
//! that broke) carry one, so a caller can print the whole chain, match on the step, or walk
//! `source()` down to the OS error, instead of parsing a sentence.

use std::borrow::Cow;

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A step that failed and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct StepError {
    /// What was being done, as a phrase: `starting the router`, `binding /run/…/control.sock`.
    pub step: Cow<'static, str>,
    /// What stopped it.
    #[source]
    pub source: BoxError,
}

impl StepError {
    /// `step` failed with `source` (an error, or a sentence saying what was wrong).
    pub fn new(step: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> StepError {
        StepError {
            step: step.into(),
            source: source.into(),
        }
    }

    /// For `map_err`: `.map_err(StepError::at("starting the router"))`.
    pub fn at<E: Into<BoxError>>(
        step: impl Into<Cow<'static, str>>,
    ) -> impl FnOnce(E) -> StepError {
        let step = step.into();
        move |e| StepError::new(step, e)
    }

    /// The OS error at the bottom of the chain, if there is one.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(err) = e {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return Some(io);
            }
            e = err.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_and_its_source_both_show_and_the_os_error_is_found() {
        let os = std::io::Error::from_raw_os_error(libc_eaddrinuse());
        let e = StepError::new("binding /tmp/x.sock", os);
        assert!(e.to_string().starts_with("binding /tmp/x.sock: "), "{e}");
        assert_eq!(
            e.io_error().and_then(|io| io.raw_os_error()),
            Some(libc_eaddrinuse())
        );
        let outer = StepError::new("starting the control socket", e);
        assert_eq!(
            outer.io_error().and_then(|io| io.raw_os_error()),
            Some(libc_eaddrinuse())
        );
        let plain = StepError::new("attaching a stream", "the answer lacks the ring's fds");
        assert_eq!(
            plain.to_string(),
            "attaching a stream: the answer lacks the ring's fds"
        );
        assert!(plain.io_error().is_none());
    }

    fn libc_eaddrinuse() -> i32 {
        rustix::io::Errno::ADDRINUSE.raw_os_error()
    }
}
