//! Reading a record's facts from its FHIR resource, so that `sign` and `emit` need
//! no flags for what the resource already says.

use hrx_domain::{RecordKind, Timestamp};
use serde_json::Value;

/// FHIR elements that carry a resource's clinical time, most specific first.
const TIME_ELEMENTS: &[&str] = &[
    "effectiveDateTime",
    "occurrenceDateTime",
    "performedDateTime",
    "onsetDateTime",
    "authoredOn",
    "recordedDate",
    "started",
    "issued",
    "date",
];

pub(super) fn infer_time(resource: &Value) -> Option<Timestamp> {
    let direct = TIME_ELEMENTS.iter().filter_map(|e| resource.get(*e));
    let periods = ["period", "effectivePeriod", "performedPeriod"]
        .iter()
        .filter_map(|p| resource.get(*p).and_then(|p| p.get("start")));
    direct
        .chain(periods)
        .filter_map(Value::as_str)
        .find_map(|s| Timestamp::parse_rfc3339(s).ok())
}

pub(super) fn infer_patient(resource: &Value) -> Option<String> {
    let r = resource
        .get("subject")
        .or_else(|| resource.get("patient"))?;
    r.get("reference")
        .and_then(Value::as_str)
        .and_then(|s| s.strip_prefix("Patient/"))
        .or_else(|| r.get("identifier")?.get("value")?.as_str())
        .map(str::to_owned)
}

pub(super) fn infer_kind(resource: &Value) -> Option<RecordKind> {
    let rt = resource.get("resourceType")?.as_str()?;
    RecordKind::ALL
        .iter()
        .copied()
        .find(|k| k.fhir_resource_type() == rt)
}
