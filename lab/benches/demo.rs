//! The wall time of `lab run` on the demo (3 nodes, 9 pods, every default controller,
//! services and external probes included), with what the run printed (root).
//! `cargo bench -p kubewire-lab --bench run -- demo`

use std::path::Path;
use std::time::Instant;

use crate::common::success;
use crate::lab_support::TestLab;
use crate::{Outcome, require_root};

pub fn run() -> Outcome {
    require_root()?;
    let lab = TestLab::new("d", true).with_default_controllers();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    for file in ["nodes.yaml", "pods.yaml", "services.yaml", "policies.yaml"] {
        lab.write(file, &std::fs::read_to_string(demo.join(file)).unwrap());
    }
    let started = Instant::now();
    let output = success(
        lab.run("run", &["--services", "--from-external"]),
        "lab run (demo)",
    );
    println!("{output}");
    println!(
        "demo lab: 3 nodes, 9 pods, up + probe + down in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    crate::report::figure("lab_run", started.elapsed().as_secs_f64(), "s");
    Ok(())
}
