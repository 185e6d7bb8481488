//! The NetworkPolicy conformance cases of `tests/netpol`, in a form any runner can use:
//! `firewall matrix` (pure) and `lab probe` (real packets) produce the same
//! [`Matrix`] and are checked against the same expectations.
//!
//! A case is a directory of steps (`1/`, `2/`, ... in order); each step is a complete
//! manifests directory (usable as `--manifests`) plus `expected.txt`. Steps after the
//! first describe the cluster after an update (a label changed, a policy replaced or
//! deleted): a live runner applies the difference, a pure runner just reads the step.
//!
//! `expected.txt` is a list of lines `FROM -> TO [PORTS] allow|deny`; later lines win.
//! FROM/TO are `ns/pod`, `ns/*`, `*/pod` or `*`; PORTS is `*` (the default) or a comma
//! list of `PORT/PROTOCOL` where either part may be `*` (`80/TCP`, `81/*`, `*/UDP`).
//! `#` starts a comment. Every row of the matrix must be covered by some line.
//! A line `error TEXT` says the step's manifests contain a bad object whose report
//! contains TEXT (the pure runner checks it; it is left out of the matrix).

use std::fmt;
use std::path::{Path, PathBuf};

use super::cluster::Protocol;
use super::matrix::{Matrix, MatrixResult};

/// The expectations of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    lines: Vec<Line>,
    errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    number: usize,
    from: PodPattern,
    to: PodPattern,
    ports: Vec<PortPattern>,
    allowed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PodPattern {
    namespace: Option<String>,
    name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PortPattern {
    port: Option<u16>,
    protocol: Option<Protocol>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: no step directories (1/, 2/, ...)")]
    NoSteps { path: PathBuf },
}

/// A difference between a matrix and the expectations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Wrong {
        row: MatrixResult,
        /// The expectation line that decided the expected value.
        line: usize,
    },
    Uncovered(MatrixResult),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Wrong { row, line } => write!(
                f,
                "{} -> {} {}/{}: got {}, expected {} (expected.txt line {line})",
                row.from,
                row.to,
                row.port,
                row.protocol,
                verdict(row.allowed),
                verdict(!row.allowed)
            ),
            Mismatch::Uncovered(row) => write!(
                f,
                "{} -> {} {}/{}: no expectation line covers it",
                row.from, row.to, row.port, row.protocol
            ),
        }
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}

impl Expectation {
    pub fn read(path: &Path) -> Result<Self, CaseError> {
        let text = std::fs::read_to_string(path).map_err(|source| CaseError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| CaseError::Syntax {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses the text; the error is (line number, message).
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            if let Some(error) = content.strip_prefix("error ") {
                errors.push(error.trim().to_string());
                continue;
            }
            let words: Vec<&str> = content.split_whitespace().collect();
            let (from, to, ports, verdict) = match words.as_slice() {
                [from, "->", to, verdict] => (*from, *to, "*", *verdict),
                [from, "->", to, ports, verdict] => (*from, *to, *ports, *verdict),
                _ => {
                    return Err((
                        number,
                        format!("expected `FROM -> TO [PORTS] allow|deny`, got `{content}`"),
                    ));
                }
            };
            let allowed = match verdict {
                "allow" => true,
                "deny" => false,
                other => return Err((number, format!("`{other}` is neither allow nor deny"))),
            };
            lines.push(Line {
                number,
                from: PodPattern::parse(from).map_err(|m| (number, m))?,
                to: PodPattern::parse(to).map_err(|m| (number, m))?,
                ports: ports
                    .split(',')
                    .map(PortPattern::parse)
                    .collect::<Result<_, _>>()
                    .map_err(|m| (number, m))?,
                allowed,
            });
        }
        Ok(Self { lines, errors })
    }

    /// Texts that the reports of bad objects must contain, one report each.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The expected verdict for a row and the line that decided it.
    pub fn expected(
        &self,
        from: &str,
        to: &str,
        port: u16,
        protocol: Protocol,
    ) -> Option<(bool, usize)> {
        self.lines
            .iter()
            .rev()
            .find(|line| {
                line.from.matches(from)
                    && line.to.matches(to)
                    && line.ports.iter().any(|p| p.matches(port, protocol))
            })
            .map(|line| (line.allowed, line.number))
    }

    /// Every row of `matrix` that disagrees with the expectations or is not covered.
    pub fn compare(&self, matrix: &Matrix) -> Vec<Mismatch> {
        let mut mismatches = Vec::new();
        for row in &matrix.results {
            match self.expected(&row.from, &row.to, row.port, row.protocol) {
                None => mismatches.push(Mismatch::Uncovered(row.clone())),
                Some((allowed, line)) if allowed != row.allowed => {
                    mismatches.push(Mismatch::Wrong {
                        row: row.clone(),
                        line,
                    });
                }
                Some(_) => {}
            }
        }
        mismatches
    }
}

impl PodPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let part = |p: &str| (p != "*").then(|| p.to_string());
        if text == "*" {
            return Ok(Self {
                namespace: None,
                name: None,
            });
        }
        match text.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(Self {
                namespace: part(ns),
                name: part(name),
            }),
            _ => Err(format!("`{text}` is not ns/pod, ns/*, */pod or *")),
        }
    }

    fn matches(&self, key: &str) -> bool {
        let (ns, name) = key.split_once('/').unwrap_or((key, ""));
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.name.as_deref().is_none_or(|n| n == name)
    }
}

impl PortPattern {
    fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self {
                port: None,
                protocol: None,
            });
        }
        let Some((port, protocol)) = text.split_once('/') else {
            return Err(format!("`{text}` is not PORT/PROTOCOL or *"));
        };
        Ok(Self {
            port: match port {
                "*" => None,
                p => Some(p.parse().map_err(|_| format!("`{p}` is not a port"))?),
            },
            protocol: match protocol {
                "*" => None,
                p => Some(
                    Protocol::parse(p).ok_or_else(|| format!("`{p}` is not TCP, UDP or SCTP"))?,
                ),
            },
        })
    }

    fn matches(&self, port: u16, protocol: Protocol) -> bool {
        self.port.is_none_or(|p| p == port) && self.protocol.is_none_or(|p| p == protocol)
    }
}

/// One case: its name and its step directories in order.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub steps: Vec<PathBuf>,
}

impl Case {
    /// The step's manifests directory and expectations.
    pub fn expectation(step: &Path) -> Result<Expectation, CaseError> {
        Expectation::read(&step.join("expected.txt"))
    }
}

/// Every case under `root` (each subdirectory with numbered step directories), sorted.
pub fn cases(root: &Path) -> Result<Vec<Case>, CaseError> {
    let read_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaseError::Read { path, source }
    };
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(root).map_err(read_error(root))? {
        let dir = entry.map_err(read_error(root))?.path();
        if !dir.is_dir() {
            continue;
        }
        let mut steps: Vec<(u32, PathBuf)> = Vec::new();
        for step in std::fs::read_dir(&dir).map_err(read_error(&dir))? {
            let step = step.map_err(read_error(&dir))?.path();
            let number = step
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(number) = number.filter(|_| step.is_dir()) {
                steps.push((number, step));
            }
        }
        if steps.is_empty() {
            return Err(CaseError::NoSteps { path: dir });
        }
        steps.sort();
        cases.push(Case {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            steps: steps.into_iter().map(|(_, path)| path).collect(),
        });
    }
    cases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(from: &str, to: &str, port: u16, protocol: Protocol, allowed: bool) -> MatrixResult {
        MatrixResult {
            from: from.into(),
            to: to.into(),
            port,
            protocol,
            allowed,
        }
    }

    #[test]
    fn later_lines_win_and_patterns_match() {
        let expectation = Expectation::parse(
            "# default-deny-ingress in x\n* -> * allow\n* -> x/* deny   # isolated\n\
             y/a -> x/a 80/TCP,81/* allow\n",
        )
        .unwrap();
        let cases = [
            ("y/b", "z/a", 80, Protocol::Tcp, Some((true, 2))),
            ("y/b", "x/a", 80, Protocol::Tcp, Some((false, 3))),
            ("y/a", "x/a", 80, Protocol::Tcp, Some((true, 4))),
            ("y/a", "x/a", 80, Protocol::Udp, Some((false, 3))),
            ("y/a", "x/a", 81, Protocol::Sctp, Some((true, 4))),
        ];
        for (from, to, port, protocol, expected) in cases {
            assert_eq!(
                expectation.expected(from, to, port, protocol),
                expected,
                "{from} {to} {port}"
            );
        }
    }

    #[test]
    fn compare_reports_wrong_and_uncovered_rows() {
        let expectation = Expectation::parse("x/* -> * allow\nx/a -> x/b 80/TCP deny\n").unwrap();
        let matrix = Matrix {
            results: vec![
                row("x/a", "x/b", 80, Protocol::Tcp, true),
                row("x/a", "x/b", 81, Protocol::Tcp, true),
                row("y/a", "x/b", 81, Protocol::Tcp, true),
            ],
        };
        let mismatches: Vec<String> = expectation
            .compare(&matrix)
            .iter()
            .map(|m| m.to_string())
            .collect();
        assert_eq!(
            mismatches,
            [
                "x/a -> x/b 80/TCP: got allow, expected deny (expected.txt line 2)",
                "y/a -> x/b 81/TCP: no expectation line covers it",
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        assert_eq!(
            Expectation::parse("* -> * allow\nx/a y/b deny\n")
                .unwrap_err()
                .0,
            2
        );
        assert_eq!(Expectation::parse("x -> * allow").unwrap_err().0, 1);
        assert_eq!(Expectation::parse("* -> * 80/ICMP allow").unwrap_err().0, 1);
        assert_eq!(Expectation::parse("* -> * maybe").unwrap_err().0, 1);
    }
}
