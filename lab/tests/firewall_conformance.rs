//! The NetworkPolicy conformance suite (tests/netpol/cases) through `firewall matrix`:
//! every step of every case, compared row by row with its expected.txt.

use std::path::Path;

use kubewire::cache::manifests;
use kubewire::firewall::conformance::{self, Case};
use kubewire::firewall::{FirewallInput, matrix};

fn cases() -> Vec<Case> {
    conformance::cases(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/netpol/cases"))
        .unwrap()
}

#[test]
fn every_case_matches_its_expected_matrix() {
    let cases = cases();
    let mut failures = Vec::new();
    let mut steps = 0;
    for case in &cases {
        for (index, step) in case.steps.iter().enumerate() {
            steps += 1;
            let label = format!("{} step {}", case.name, index + 1);
            let expectation = Case::expectation(step).unwrap();
            let snapshot = manifests::load_snapshot(step).unwrap();
            let input = FirewallInput::from_snapshot(&snapshot);
            let matrix = matrix::compute(&input);
            assert!(!matrix.results.is_empty(), "{label}: empty matrix");
            for mismatch in expectation.compare(&matrix) {
                failures.push(format!("{label}: {mismatch}"));
            }
            let expected_errors = expectation.errors();
            if input.errors.len() != expected_errors.len()
                || !expected_errors.iter().all(|e| {
                    input
                        .errors
                        .iter()
                        .any(|got| got.message.contains(e.as_str()))
                })
            {
                failures.push(format!(
                    "{label}: reported {:?}, expected reports containing {expected_errors:?}",
                    input.errors
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let upstream = cases.iter().filter(|c| c.name.starts_with('u')).count();
    assert!(upstream >= 48, "only {upstream} upstream cases");
    println!("{} cases, {steps} steps", cases.len());
}

#[test]
fn a_wrong_expectation_is_caught() {
    // The runner must be able to fail: flip one line of a real case.
    let case = cases()
        .into_iter()
        .find(|c| c.name.starts_with("u01"))
        .unwrap();
    let step = &case.steps[0];
    let text = std::fs::read_to_string(step.join("expected.txt")).unwrap();
    let flipped =
        conformance::Expectation::parse(&text.replace("* -> x/* deny", "* -> x/* allow")).unwrap();
    let input = FirewallInput::from_snapshot(&manifests::load_snapshot(step).unwrap());
    let mismatches = flipped.compare(&matrix::compute(&input));
    // 6 sources outside x and 2 inside, to each of 3 pods... minus self: 8 * 3 pods * 6 ports.
    assert_eq!(mismatches.len(), 8 * 3 * 6);
}
