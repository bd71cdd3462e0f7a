//! The benchmark's result: one row per figure, each with its limit and ratio where the
//! issue defines one, printed as a table and written as JSON.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::stats::Machine;

/// Whether a row was measured in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Measured,
    /// Not measured in this run, by design: the detail says why and how to get it
    /// (e.g. the distributed rows without Kafka and PostgreSQL).
    NotMeasured,
    /// Asked for, but its phase failed: the detail holds the error.
    Failed,
}

/// How a ratio is judged against its target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The value (or its ratio, when the row has a limit) must be at least this.
    AtLeast(f64),
    /// The value (or its ratio, when the row has a limit) must be at most this.
    AtMost(f64),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::AtLeast(x) => write!(f, "≥ {}", num(*x)),
            Target::AtMost(x) => write!(f, "≤ {}", num(*x)),
        }
    }
}

/// One figure.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Table section ("limits", "embedded ingest", …).
    pub section: String,
    /// Stable key, e.g. `embedded.ingest.accepted_per_s`.
    pub id: String,
    pub label: String,
    pub unit: String,
    pub status: Status,
    /// `None` when not measured.
    pub value: Option<f64>,
    /// The id of the row this figure is compared with.
    pub limit: Option<String>,
    /// value / limit's value.
    pub ratio: Option<f64>,
    /// On the ratio when there is a limit, else on the value.
    pub target: Option<Target>,
    /// Whether the target is met (informational: benchmarks assert nothing).
    pub met: Option<bool>,
    /// How it was measured.
    pub detail: String,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `smoke` or `full`.
    pub mode: String,
    pub seed: u64,
    pub machine: Machine,
    /// Wall time of the whole run, in seconds.
    pub elapsed_s: f64,
    pub rows: Vec<Row>,
    /// Remarks on the run (errors of a phase, what the RSS includes, …).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the report to {path}: {source}")]
pub struct WriteError {
    pub path: String,
    pub source: std::io::Error,
}

impl Report {
    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.id == id)
    }

    /// Writes the report as pretty JSON, creating the parent directory.
    pub fn write_json(&self, path: &Path) -> Result<(), WriteError> {
        let err = |source| WriteError {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| err(e.into()))?;
        std::fs::write(path, json + "\n").map_err(err)
    }

    /// The table as Markdown (what [`fmt::Display`] prints).
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| section | figure | value | unit | vs limit | ratio | target | met |\n");
        out.push_str("|---|---|---:|---|---|---:|---|---|\n");
        for r in &self.rows {
            let value = match (r.status, r.value) {
                (Status::NotMeasured, _) => "not measured".to_owned(),
                (Status::Failed, _) => "FAILED".to_owned(),
                (_, Some(v)) => num(v),
                (_, None) => "—".to_owned(),
            };
            let ratio = r.ratio.map(|x| format!("{x:.2}×")).unwrap_or_default();
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.section,
                r.label,
                value,
                r.unit,
                r.limit.as_deref().unwrap_or(""),
                ratio,
                r.target.map(|t| t.to_string()).unwrap_or_default(),
                met
            ));
        }
        out
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.machine;
        writeln!(
            f,
            "hrx bench ({} mode, seed {}, {} build) on {} CPU(s), {}, {} MiB, {:.1} s",
            self.mode,
            self.seed,
            m.build,
            m.cpus,
            m.cpu_model,
            m.memory_mib.unwrap_or(0),
            self.elapsed_s
        )?;
        writeln!(f)?;
        write!(f, "{}", self.table())?;
        writeln!(f)?;
        writeln!(f, "How each figure was measured:")?;
        for r in self.rows.iter().filter(|r| !r.detail.is_empty()) {
            writeln!(f, "- `{}`: {}", r.id, r.detail)?;
        }
        if !self.notes.is_empty() {
            writeln!(f)?;
            for n in &self.notes {
                writeln!(f, "- {n}")?;
            }
        }
        Ok(())
    }
}

/// A number with sensible precision for a table.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        // Thousands separated by a thin space would confuse JSON readers; use commas.
        let s = format!("{:.0}", x);
        let (sign, digits) = s.split_at(if x < 0.0 { 1 } else { 0 });
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("{sign}{grouped}")
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Rows are built with this.
#[derive(Debug)]
pub(crate) struct RowSpec {
    pub section: &'static str,
    pub id: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub value: Option<f64>,
    pub limit: Option<(&'static str, Option<f64>)>,
    pub target: Option<Target>,
    pub detail: String,
}

impl RowSpec {
    pub fn new(
        section: &'static str,
        id: &'static str,
        label: impl Into<String>,
        unit: &'static str,
    ) -> Self {
        Self {
            section,
            id,
            label: label.into(),
            unit,
            value: None,
            limit: None,
            target: None,
            detail: String::new(),
        }
    }

    pub fn value(mut self, v: Option<f64>) -> Self {
        self.value = v.filter(|x| x.is_finite());
        self
    }

    pub fn limit(mut self, id: &'static str, value: Option<f64>) -> Self {
        self.limit = Some((id, value));
        self
    }

    pub fn target(mut self, t: Target) -> Self {
        self.target = Some(t);
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }

    pub fn measured(self) -> Row {
        self.build(Status::Measured)
    }

    pub fn not_measured(self) -> Row {
        self.build(Status::NotMeasured)
    }

    pub fn failed(self) -> Row {
        self.build(Status::Failed)
    }

    fn build(self, status: Status) -> Row {
        let value = if status == Status::Measured {
            self.value
        } else {
            None
        };
        let ratio = match (value, self.limit.and_then(|(_, l)| l)) {
            (Some(v), Some(l)) if l > 0.0 => Some(v / l),
            _ => None,
        };
        let judged = if self.limit.is_some() { ratio } else { value };
        let met = match (self.target, judged) {
            (Some(Target::AtLeast(t)), Some(x)) => Some(x >= t),
            (Some(Target::AtMost(t)), Some(x)) => Some(x <= t),
            _ => None,
        };
        Row {
            section: self.section.into(),
            id: self.id.into(),
            label: self.label,
            unit: self.unit.into(),
            status,
            value,
            limit: self.limit.map(|(id, _)| id.to_owned()),
            ratio,
            target: self.target,
            met,
            detail: self.detail,
        }
    }
}

/// A millisecond figure for a detail text; "—" when there is none.
pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "—".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_targets() {
        let r = RowSpec::new("s", "a", "A", "/s")
            .value(Some(750.0))
            .limit("l", Some(1000.0))
            .target(Target::AtLeast(0.75))
            .measured();
        assert_eq!(r.ratio, Some(0.75));
        assert_eq!(r.met, Some(true));
        let r = RowSpec::new("s", "b", "B", "ms")
            .value(Some(300.0))
            .target(Target::AtMost(250.0))
            .measured();
        assert_eq!(r.met, Some(false));
        let r = RowSpec::new("s", "c", "C", "/s")
            .value(Some(1.0))
            .not_measured();
        assert_eq!((r.value, r.met), (None, None));
        let r = RowSpec::new("s", "d", "D", "/s").failed();
        assert_eq!((r.status, r.value), (Status::Failed, None));
        assert_eq!(num(1234567.0), "1,234,567");
        assert_eq!(num(0.123), "0.12");
    }
}
