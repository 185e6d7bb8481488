//! The figures the benchmarks measure, machine-readable: each bench calls [`figure`]
//! or [`versus`] once per number it reports; the call prints a `BENCH` line (for
//! people and greps) and keeps the figure, and the runner writes them all to
//! `report.json` and `report.md` (`--report DIR`). [`quick`] says whether the
//! benches run at their small `--quick` scale.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

/// One measured number; `baseline` is the same measure of the tool we compare with.
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub baseline: Option<(f64, String)>,
}

/// A benchmark that did not run, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub bench: String,
    pub why: String,
}

#[derive(Default)]
struct Collected {
    bench: String,
    figures: Vec<Figure>,
    skipped: Vec<Skipped>,
}

static COLLECTED: Mutex<Collected> = Mutex::new(Collected {
    bench: String::new(),
    figures: Vec::new(),
    skipped: Vec::new(),
});

/// The cluster size benches use under `--quick` where they would use
/// [`ClusterSize::BENCH`].
pub const QUICK_CLUSTER: kubewire_lab::synthetic::ClusterSize =
    kubewire_lab::synthetic::ClusterSize {
        nodes: 10,
        namespaces: 20,
        pods: 1_000,
        services: 200,
        endpoints_per_service: 5,
        policies: 100,
    };

/// The environment variable the runner sets for `--quick`.
pub const QUICK_ENV: &str = "KUBEWIRE_BENCH_QUICK";

/// True when the benches run at their `--quick` scale.
pub fn quick() -> bool {
    std::env::var(QUICK_ENV).is_ok_and(|v| v == "1")
}

/// `full`, or `small` under `--quick`.
pub fn scale<T>(full: T, small: T) -> T {
    if quick() { small } else { full }
}

fn with<T>(f: impl FnOnce(&mut Collected) -> T) -> T {
    f(&mut COLLECTED.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Names the benchmark whose figures follow (their names get `bench.` in front).
pub fn begin(bench: &str) {
    with(|c| c.bench = bench.to_string());
}

pub fn skipped(bench: &str, why: &str) {
    with(|c| {
        c.skipped.push(Skipped {
            bench: bench.into(),
            why: why.into(),
        })
    });
}

fn record(name: &str, value: f64, unit: &str, baseline: Option<(f64, &str)>) {
    let name = with(|c| {
        let name = if c.bench.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", c.bench)
        };
        c.figures.push(Figure {
            name: name.clone(),
            value,
            unit: unit.into(),
            baseline: baseline.map(|(v, what)| (v, what.to_string())),
        });
        name
    });
    match baseline {
        Some((base, what)) => println!(
            "BENCH {name} {} {unit} {} {:.3} ({what})",
            number(value),
            number(base),
            ratio(value, base)
        ),
        None => println!("BENCH {name} {} {unit}", number(value)),
    }
}

/// A figure of ours.
pub fn figure(name: &str, value: f64, unit: &str) {
    record(name, value, unit, None);
}

/// A duration, in milliseconds.
pub fn millis(name: &str, duration: Duration) {
    figure(name, duration.as_secs_f64() * 1000.0, "ms");
}

/// A figure of ours beside the same measure of `baseline_tool` (e.g. `ip -batch`).
pub fn versus(name: &str, value: f64, unit: &str, baseline: f64, baseline_tool: &str) {
    record(name, value, unit, Some((baseline, baseline_tool)));
}

/// Two durations side by side, in milliseconds.
pub fn millis_versus(name: &str, ours: Duration, theirs: Duration, baseline_tool: &str) {
    versus(
        name,
        ours.as_secs_f64() * 1000.0,
        "ms",
        theirs.as_secs_f64() * 1000.0,
        baseline_tool,
    );
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline == 0.0 {
        0.0
    } else {
        value / baseline
    }
}

/// At most 3 decimals, none for large numbers.
fn number(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn rounded(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// `report.json`: every figure, then every skipped benchmark (value null).
pub fn json() -> Value {
    with(|c| {
        let mut list: Vec<Value> = c
            .figures
            .iter()
            .map(|f| {
                let mut item = json!({"name": f.name, "value": rounded(f.value), "unit": f.unit});
                if let Some((base, tool)) = &f.baseline {
                    item["baseline"] = json!(rounded(*base));
                    item["baseline_tool"] = json!(tool);
                    item["ratio"] = json!(rounded(ratio(f.value, *base)));
                }
                item
            })
            .collect();
        list.extend(
            c.skipped
                .iter()
                .map(|s| json!({"name": s.bench, "value": null, "unit": "", "skipped": s.why})),
        );
        Value::Array(list)
    })
}

/// `report.md`: one table of every figure, and the skipped benchmarks.
pub fn markdown(title: &str) -> String {
    with(|c| {
        let mut out = format!(
            "# {title}\n\n| figure | value | unit | baseline | ratio |\n|---|---:|---|---:|---:|\n"
        );
        for f in &c.figures {
            let (base, ratio_text) = match &f.baseline {
                Some((base, tool)) => (
                    format!("{} ({tool})", number(*base)),
                    format!("{}x", number(ratio(f.value, *base))),
                ),
                None => (String::new(), String::new()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {base} | {ratio_text} |",
                f.name,
                number(f.value),
                f.unit
            );
        }
        if !c.skipped.is_empty() {
            out.push_str("\nSkipped:\n\n");
            for s in &c.skipped {
                let _ = writeln!(out, "- {}: {}", s.bench, s.why);
            }
        }
        out
    })
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write(dir: &Path, title: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(&json()).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(dir.join("report.md"), markdown(title))
}
