//! How a Service chooses its IPVS scheduler: kube-router's annotations (also under
//! `kubewire.io/`), so that clusters migrating from kube-router keep their choice.
//! Values are read as kube-router reads them; anything else is reported and the
//! default (`rr`) used, so a typo never takes a Service down.

use crate::ipvs::ServiceFlags;

/// The scheduler of a Service without the annotation (kube-proxy's and kube-router's).
pub const DEFAULT_SCHEDULER: &str = "rr";

/// The schedulers the annotation may name (those kube-router accepts).
pub const SCHEDULERS: [&str; 7] = ["rr", "wrr", "lc", "wlc", "sh", "dh", "mh"];

/// A Service port's scheduler and the flags it adds to the IPVS service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduling {
    pub scheduler: &'static str,
    /// `flag-1` (`sh-fallback`/`mh-fallback`).
    pub fallback: bool,
    /// `flag-2` (`sh-port`/`mh-port`).
    pub port: bool,
}

impl Scheduling {
    /// Sets the scheduler flags on `flags`.
    pub fn apply(&self, flags: &mut ServiceFlags) {
        flags.sched_fallback = self.fallback;
        flags.sched_port = self.port;
    }
}

/// Reads the annotations' values; problems name the Service (`label`) and the value.
pub fn parse(
    label: &str,
    scheduler: Option<&str>,
    flags: Option<&str>,
    problems: &mut Vec<String>,
) -> Scheduling {
    let mut out = Scheduling {
        scheduler: DEFAULT_SCHEDULER,
        fallback: false,
        port: false,
    };
    if let Some(name) = scheduler.filter(|s| !s.is_empty()) {
        match SCHEDULERS.iter().find(|s| s.eq_ignore_ascii_case(name)) {
            Some(known) => out.scheduler = known,
            None => problems.push(format!(
                "Service {label}: annotation service.scheduler {name:?} is not one of {}; using {DEFAULT_SCHEDULER}",
                SCHEDULERS.join(", ")
            )),
        }
    }
    for flag in flags.unwrap_or("").split(',').map(str::trim) {
        match flag.to_ascii_lowercase().as_str() {
            "" => {}
            "flag-1" | "sh-fallback" | "mh-fallback" => out.fallback = true,
            "flag-2" | "sh-port" | "mh-port" => out.port = true,
            // No scheduler reads flag 3; kubewire sets it on every service it owns.
            "flag-3" => {}
            _ => problems.push(format!(
                "Service {label}: annotation service.schedflags {flag:?} is not flag-1, flag-2 or flag-3; ignored"
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_read_as_kube_router_reads_them() {
        // (scheduler, flags) → (scheduler, fallback, port), problems
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            (&'a str, bool, bool),
            usize,
        );
        let cases: &[Case] = &[
            (None, None, ("rr", false, false), 0),
            (Some("mh"), Some("flag-1,flag-2"), ("mh", true, true), 0),
            (Some("SH"), Some("sh-port"), ("sh", false, true), 0),
            (Some("wlc"), Some(" flag-3 "), ("wlc", false, false), 0),
            (Some("fifo"), None, ("rr", false, false), 1),
            (Some("lc"), Some("flag-1,flag-9"), ("lc", true, false), 1),
            (Some(""), Some(""), ("rr", false, false), 0),
        ];
        for (scheduler, flags, (name, fallback, port), n_problems) in cases {
            let mut problems = Vec::new();
            let got = parse("x/web:80/TCP", *scheduler, *flags, &mut problems);
            assert_eq!(
                (got.scheduler, got.fallback, got.port),
                (*name, *fallback, *port),
                "{scheduler:?} {flags:?}"
            );
            assert_eq!(problems.len(), *n_problems, "{problems:?}");
        }
        let mut problems = Vec::new();
        parse("x/web:80/TCP", Some("fifo"), None, &mut problems);
        assert!(problems[0].starts_with(
            "Service x/web:80/TCP: annotation service.scheduler \"fifo\" is not one of rr, wrr"
        ));
    }
}
