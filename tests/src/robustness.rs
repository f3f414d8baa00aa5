//! The robustness summary: every robustness scenario a test tries, whether it held, and the
//! numbers it measured. `cargo xtask test` prints the collected table after the suite.
//!
//! A test opens a [`Scenario`], adds numbers as it goes, and lets it drop: a scenario that
//! drops while its test panics is recorded as FAILED, with the numbers gathered until then.
//! Each scenario is one JSON file under [`dir`], so tests running in parallel never interleave.

use std::{fmt::Display, path::PathBuf};

use serde_json::json;

/// Where the scenario records go: `$PODNET_ROBUSTNESS_DIR`, else `target/robustness`.
pub const DIR_ENV: &str = "PODNET_ROBUSTNESS_DIR";

/// The directory the records are written to.
pub fn dir() -> PathBuf {
    std::env::var_os(DIR_ENV).map_or_else(
        || crate::workspace_root().join("target/robustness"),
        PathBuf::from,
    )
}

/// One robustness scenario of the summary.
pub struct Scenario {
    name: String,
    numbers: Vec<(String, String)>,
}

impl Scenario {
    /// Starts the scenario `name` (a short sentence: what was tried).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            numbers: Vec::new(),
        }
    }

    /// Records a measured number (or any short fact) under `key`.
    pub fn number(&mut self, key: &str, value: impl Display) -> &mut Self {
        self.numbers.push((key.to_owned(), value.to_string()));
        self
    }

    fn file_name(&self) -> String {
        let slug: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        format!("{slug}.json")
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let held = !std::thread::panicking();
        let numbers: serde_json::Map<String, serde_json::Value> = self
            .numbers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let record = json!({ "scenario": self.name, "held": held, "numbers": numbers });
        let dir = dir();
        // A summary that cannot be written must not turn a passing test into a failing one.
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(self.file_name()), record.to_string());
        }
    }
}
