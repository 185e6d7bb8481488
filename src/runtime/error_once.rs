/// A failure that repeats every sync (a port that cannot be bound, a read that
/// fails): warned about once per distinct message, then at debug level until it
/// clears or changes.
#[derive(Debug, Default)]
pub struct ErrorOnce {
    last: Option<String>,
}

impl ErrorOnce {
    /// Logs `message`: a warning when it differs from the previous one, else a debug
    /// line. Returns whether it was warned about.
    pub fn report(&mut self, message: &str) -> bool {
        if self.last.as_deref() == Some(message) {
            tracing::debug!("{message} (again)");
            return false;
        }
        tracing::warn!("{message}");
        self.last = Some(message.to_string());
        true
    }

    /// The failure is over: the next one is warned about again. Returns whether
    /// there was one.
    pub fn clear(&mut self) -> bool {
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_distinct_message_and_again_after_a_clear() {
        let mut once = ErrorOnce::default();
        assert!(once.report("a"));
        assert!(!once.report("a"));
        assert!(once.report("b"));
        assert!(!once.report("b"));
        once.clear();
        assert!(once.report("b"));
    }
}
