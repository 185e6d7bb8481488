use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Checks a `-v/--log-level` value when the command line is parsed, so a filter that
/// does not parse is refused with its reason instead of silently becoming `info`.
pub fn parse_log_filter(text: &str) -> Result<String, String> {
    EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|err| format!("`{text}` is not a log level or tracing filter: {err}"))
}

/// Installs the global subscriber; `level` is a tracing filter (`info`,
/// `kubewire=debug,kube=info`, ...), checked by [`parse_log_filter`]. Logs go to stderr
/// so stdout stays machine-readable, with colours only when stderr is a terminal (a
/// log file or a container runtime's log gets plain text).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests, nested verbs) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_are_checked() {
        assert_eq!(
            parse_log_filter("kubewire=debug,kube=info").as_deref(),
            Ok("kubewire=debug,kube=info")
        );
        assert_eq!(parse_log_filter("warn").as_deref(), Ok("warn"));
        let err = parse_log_filter("kubewire=loud").unwrap_err();
        assert!(err.contains("`kubewire=loud` is not a log level"), "{err}");
    }
}
