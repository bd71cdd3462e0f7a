//! A record's FHIR body, for every record kind: the JSON and FHIR checks ingest makes.
#![no_main]

use hrx_domain::content::check_record;
use hrx_domain::event::unchecked;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let record = unchecked::Record {
        patient_id: "026062001234".into(),
        kind: i32::from(kind % 13),
        occurred_at: Some(unchecked::RawTime {
            seconds: 1_793_491_200,
            nanos: 0,
        }),
        author: "CCHN-009921".into(),
        sensitivity: Vec::new(),
        supersedes: String::new(),
        content_type: "application/fhir+json".into(),
        body: body.to_vec(),
    };
    let _ = check_record(&record);
});
