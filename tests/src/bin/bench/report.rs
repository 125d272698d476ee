//! What every section hands back: rows of one measured value each, with the
//! ratio to what it is compared with and the raw numbers behind it; printed
//! as a table and written together as one JSON file.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Serialize;

#[derive(Serialize)]
pub struct Row {
    pub case: String,
    pub value: f64,
    pub unit: &'static str,
    /// `value` divided by the value of `against`, measured in the same run.
    pub ratio: Option<f64>,
    pub against: String,
    /// The numbers `value` was computed from, and other observations.
    pub raw: BTreeMap<&'static str, f64>,
}

impl Row {
    pub fn new(case: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self { case: case.into(), value, unit, ratio: None, against: String::new(), raw: BTreeMap::new() }
    }

    pub fn raw(mut self, name: &'static str, value: f64) -> Self {
        self.raw.insert(name, value);
        self
    }

    /// Sets the ratio to `reference` (a value measured in the same run).
    pub fn against(self, name: impl Into<String>, reference: f64) -> Self {
        let ratio = self.value / reference;
        self.ratio(name, ratio)
    }

    /// Sets a ratio computed elsewhere (e.g. a median of per-round ratios).
    pub fn ratio(mut self, name: impl Into<String>, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self.against = name.into();
        self
    }
}

#[derive(Serialize)]
pub struct Section {
    pub id: &'static str,
    pub title: String,
    pub rows: Vec<Row>,
    /// Cases that could not run, and why.
    pub skipped: Vec<String>,
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(id: &'static str, title: impl Into<String>) -> Self {
        Self { id, title: title.into(), rows: Vec::new(), skipped: Vec::new(), notes: Vec::new() }
    }

    /// Records a case that could not run (once, however many rounds try).
    pub fn skip(&mut self, why: String) {
        if !self.skipped.contains(&why) {
            self.skipped.push(why);
        }
    }

    pub fn print(&self) {
        println!("\n== {} ==", self.title);
        let width = self.rows.iter().map(|r| r.case.len()).max().unwrap_or(4).max(4);
        println!("{:<width$}  {:>14} {:<9} {:>8}  against / raw", "case", "value", "unit", "ratio");
        let mut previous = "";
        for row in &self.rows {
            let ratio = row.ratio.map_or("-".to_owned(), |r| format!("{r:.3}"));
            let raw: Vec<String> = row.raw.iter().map(|(k, v)| format!("{k}={}", number(*v))).collect();
            let mut details = vec![raw.join(" ")];
            // The reference is named where it changes, not on every row.
            if row.against != previous {
                details.insert(0, format!("vs {}", row.against));
            }
            previous = &row.against;
            details.retain(|d| !d.is_empty());
            let line = format!(
                "{:<width$}  {:>14} {:<9} {:>8}  {}",
                row.case,
                number(row.value),
                row.unit,
                ratio,
                details.join("; ")
            );
            println!("{}", line.trim_end());
        }
        for skipped in &self.skipped {
            println!("skipped: {skipped}");
        }
        for note in &self.notes {
            println!("note: {note}");
        }
    }
}

/// The item with the median `key` (the upper one of an even count).
pub fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> Option<T> {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len() / 2;
    items.into_iter().nth(middle)
}

/// The median of the per-round ratios `values[r] / baselines[r]` (rounds
/// paired in order): drift between rounds cancels out.
pub fn median_ratio(values: impl IntoIterator<Item = f64>, baselines: impl IntoIterator<Item = f64>) -> Option<f64> {
    median_by(values.into_iter().zip(baselines).map(|(v, b)| v / b).collect(), |r| *r)
}

/// Integers without decimals, small values with a few.
fn number(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 1000.0 { format!("{value:.0}") } else { format!("{value:.3}") }
}

#[derive(Serialize)]
struct Document<'a> {
    quick: bool,
    machine: Machine,
    sections: &'a [Section],
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
    started_unix: u64,
}

/// Writes target/bench/bench.json; returns its path.
pub fn write_json(sections: &[Section], quick: bool, started_unix: u64) -> std::io::Result<PathBuf> {
    let machine = Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        started_unix,
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bench.json");
    let body = serde_json::to_string_pretty(&Document { quick, machine, sections })?;
    std::fs::write(&path, body + "\n")?;
    Ok(path.canonicalize().unwrap_or(path))
}
