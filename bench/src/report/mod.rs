//! The report of one `bench/compare.sh` run: the `sluice-load` JSON files of its raw
//! directory in, `report.md`, `report.json` and `latency.svg` out (the
//! `sluice-bench-report` binary is a thin caller of [`write()`]).
//!
//! `raw/` holds `meta.json` (written by `compare.sh`: layout, pids, rounds, RSS readings,
//! the idle-connections phase, and the names of the other files) and the JSON reports of
//! `sluice-load compare` and `sluice-load streams`. A missing file or system (say nginx
//! could not be installed) leaves its numbers `null` and its checks `n/a`; it is not an
//! error.
//!
//! By what happens: `input` reads the directory, `measure` derives the figures (medians
//! over interleaved rounds, CPU per request with its user/kernel split, added latency as
//! `system − direct` per percentile), `targets` checks them, and `json`, `markdown` and
//! `svg` write the three outputs.

use std::error::Error;
use std::path::{Path, PathBuf};

mod input;
mod json;
mod markdown;
mod measure;
mod svg;
mod targets;
#[cfg(test)]
mod tests;

type Res<T> = Result<T, Box<dyn Error>>;

/// Reads the run in `raw` and writes `report.json`, `report.md` and `latency.svg` into
/// `out` (created if missing); returns the paths written.
pub fn write(raw: &Path, out: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let run = input::Run::load(raw)?;
    std::fs::create_dir_all(out)?;
    let targets = targets::issue_targets(&run);
    let budget = targets::design_budget(&run);
    let json_path = out.join("report.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json::report(&run, &targets, &budget))? + "\n",
    )?;
    let md_path = out.join("report.md");
    std::fs::write(&md_path, markdown::report(&run, &targets, &budget))?;
    let svg_path = out.join("latency.svg");
    svg::draw(&run, &svg_path)?;
    Ok(vec![md_path, json_path, svg_path])
}
