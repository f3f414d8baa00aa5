//! The robustness summary printed after `cargo xtask test`: one line per scenario the tests
//! recorded (see `podnet_tests::robustness`), with whether it held and its numbers.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// Empties the records directory before a run, so the summary shows only this run.
pub fn reset(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/robustness");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(dir)
}

/// Prints the table of recorded scenarios, sorted by name; a record that cannot be read is
/// shown as such rather than hidden.
pub fn print_summary(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut rows: Vec<(String, bool, String)> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&text).map_or_else(
                |_| {
                    (
                        e.path().display().to_string(),
                        false,
                        "unreadable record".into(),
                    )
                },
                |v| {
                    let numbers = v["numbers"].as_object().map_or_else(String::new, |m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    });
                    (
                        v["scenario"].as_str().unwrap_or_default().to_owned(),
                        v["held"].as_bool().unwrap_or(false),
                        numbers,
                    )
                },
            )
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    rows.sort();
    let held = rows.iter().filter(|r| r.1).count();
    println!(
        "\nRobustness summary: {held} of {} scenarios held",
        rows.len()
    );
    for (scenario, ok, numbers) in rows {
        let verdict = if ok { "held  " } else { "FAILED" };
        println!("  {verdict} {scenario}");
        if !numbers.is_empty() {
            println!("         {numbers}");
        }
    }
}
