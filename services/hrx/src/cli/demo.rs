//! `hrx demo`: the whole story of the brief on a throwaway node — registration, signed
//! records from a district hospital, the patient enrolling their own key there, a
//! referral read refused without consent, the provincial hospital's consent request
//! approved with the patient's key, an unrelated facility's self-grant refused, a
//! paper-form grant bounded by the rules, a clinic following the patient live, a
//! break-glass alert reaching the national center and the patient, the patient's own
//! access list, and the national center's monitor.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use hrx_domain::event::FHIR_JSON;
use hrx_domain::{FacilityId, FacilityLevel, Purpose, Reason, RecordKind, SigningKey, Timestamp};
use hrx_node::client::{
    FacilityClient, NationalCenter, PatientClient, connect_patient_port, enrollment,
};
use hrx_node::{Node, NodeConfig};
use hrx_proto::{codec, v1};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

const DISTRICT: &str = "26012";
const PROVINCIAL: &str = "26001";
const CLINIC: &str = "26105";
/// A private clinic in another city that never treated the demo's patients.
const UNRELATED: &str = "79123";

/// (id, name, date of birth) of the demo's patients.
const PATIENTS: [(&str, &str); 3] = [
    ("026062001234", "Nguyễn Văn An"),
    ("026185004321", "Trần Thị Bình"),
    ("026070009876", "Lê Văn Cường"),
];

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's data directory instead of deleting it (to run `hrx reproject` on it).
    #[arg(long)]
    keep: Option<std::path::PathBuf>,
}

fn fac(id: &str) -> FacilityId {
    FacilityId::parse(id).expect("demo facility ids are valid")
}

fn at(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).expect("demo times are valid")
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

fn patient_ref(p: &str) -> Value {
    json!({"reference": format!("Patient/{p}")})
}

/// A record body from a FHIR resource.
fn record(
    patient: &str,
    kind: RecordKind,
    occurred: &str,
    resource: Value,
) -> v1::facility_event::Body {
    v1::facility_event::Body::Record(v1::Record {
        patient_id: patient.to_owned(),
        kind: kind.code(),
        occurred_at: Some(codec::timestamp(at(occurred))),
        author: "CCHN-002614".into(),
        sensitivity: vec![],
        supersedes: String::new(),
        content_type: FHIR_JSON.into(),
        body: serde_json::to_vec(&resource).expect("JSON serialises"),
    })
}

fn encounter(p: &str, when: &str, reason: &str) -> v1::facility_event::Body {
    record(
        p,
        RecordKind::Encounter,
        when,
        json!({
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": patient_ref(p), "period": {"start": when},
            "reasonCode": [{"text": reason}],
        }),
    )
}

fn condition(p: &str, when: &str, icd10: &str, display: &str) -> v1::facility_event::Body {
    record(
        p,
        RecordKind::Condition,
        when,
        json!({
            "resourceType": "Condition", "subject": patient_ref(p), "recordedDate": when,
            "code": coding("http://hl7.org/fhir/sid/icd-10", icd10, display),
        }),
    )
}

fn lab(
    p: &str,
    when: &str,
    loinc: &str,
    display: &str,
    value: f64,
    unit: &str,
) -> v1::facility_event::Body {
    record(
        p,
        RecordKind::Observation,
        when,
        json!({
            "resourceType": "Observation", "status": "final", "subject": patient_ref(p),
            "code": coding("http://loinc.org", loinc, display), "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit},
        }),
    )
}

fn medication(p: &str, when: &str, atc: &str, display: &str) -> v1::facility_event::Body {
    record(
        p,
        RecordKind::MedicationRequest,
        when,
        json!({
            "resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": patient_ref(p), "authoredOn": when,
            "medicationCodeableConcept": coding("http://www.whocc.no/atc", atc, display),
        }),
    )
}

fn referral(p: &str, when: &str) -> v1::facility_event::Body {
    record(
        p,
        RecordKind::Document,
        when,
        json!({
            "resourceType": "DocumentReference", "status": "current", "subject": patient_ref(p), "date": when,
            "type": coding("http://loinc.org", "57133-1", "Giấy chuyển tuyến (referral note)"),
            "content": [{"attachment": {"contentType": "application/pdf", "url": "https://his.26012.example/ct/2026-0312"}}],
        }),
    )
}

fn days_from_now(days: i64) -> Timestamp {
    Timestamp::now()
        .checked_add(hrx_domain::Duration::from_secs(days * 86_400).expect("positive"))
        .expect("in range")
}

/// A grant's terms; `form` is the paper form's evidence (attested grants).
fn grant_terms(
    patient: &str,
    grantee: &str,
    purposes: &[Purpose],
    days: i64,
    form: bool,
) -> v1::ConsentGrant {
    v1::ConsentGrant {
        patient_id: patient.into(),
        purposes: purposes.iter().map(|p| p.code()).collect(),
        kinds: vec![],
        include_sensitive: vec![],
        data_from: None,
        data_until: None,
        expires_at: Some(codec::timestamp(days_from_now(days))),
        evidence: form.then(|| v1::ConsentEvidence {
            form_id: format!("PCT-{grantee}-2026-000871"),
            sha256: hrx_domain::Sha256::digest(b"scanned, signed consent form")
                .as_bytes()
                .to_vec(),
        }),
        request_event_id: String::new(),
        grantee: Some(v1::consent_grant::Grantee::GranteeFacilityId(
            grantee.into(),
        )),
    }
}

/// A facility-attested grant (a paper consent form, for a patient without the app).
fn attested_grant(
    patient: &str,
    grantee: &str,
    purposes: &[Purpose],
    days: i64,
) -> v1::facility_event::Body {
    v1::facility_event::Body::ConsentGrant(grant_terms(patient, grantee, purposes, days, true))
}

/// A patient-signed grant, as the patient's app makes it.
fn patient_grant(
    patient: &str,
    grantee: &str,
    purposes: &[Purpose],
    days: i64,
) -> v1::patient_statement::Body {
    v1::patient_statement::Body::ConsentGrant(grant_terms(patient, grantee, purposes, days, false))
}

fn consent_request(
    patient: &str,
    purposes: &[Purpose],
    days: i64,
    reason: &str,
) -> v1::facility_event::Body {
    v1::facility_event::Body::ConsentRequest(v1::ConsentRequest {
        patient_id: patient.into(),
        purposes: purposes.iter().map(|p| p.code()).collect(),
        kinds: vec![],
        data_from: None,
        data_until: None,
        duration: Some(prost_types::Duration {
            seconds: days * 86_400,
            nanos: 0,
        }),
        reason: reason.into(),
        include_sensitive: vec![],
    })
}

fn rejection_text(r: &v1::SubmitResult) -> String {
    let rej = r.rejection.clone().unwrap_or_default();
    format!(
        "{}: {}",
        Reason::from_code(rej.reason)
            .map(|r| r.name())
            .unwrap_or("?"),
        rej.message
    )
}

fn accepted(r: &v1::SubmitResult, what: &str) -> anyhow::Result<()> {
    if r.status != v1::SubmitStatus::Accepted as i32 {
        bail!("{what} was not accepted: {}", rejection_text(r));
    }
    Ok(())
}

/// What a record is about, from its FHIR body: the code's display text.
fn summary(e: &v1::TimelineEntry) -> String {
    let v: Value = serde_json::from_slice(&e.body).unwrap_or(Value::Null);
    let code = ["code", "medicationCodeableConcept", "type"]
        .iter()
        .find_map(|k| {
            v.get(*k)
                .and_then(|c| c.get("text"))
                .and_then(Value::as_str)
        });
    let reason = v.pointer("/reasonCode/0/text").and_then(Value::as_str);
    let value = v.pointer("/valueQuantity/value").map(|x| {
        let unit = v
            .pointer("/valueQuantity/unit")
            .and_then(Value::as_str)
            .unwrap_or("");
        format!(" = {x} {unit}")
    });
    format!(
        "{}{}",
        code.or(reason).unwrap_or("-"),
        value.unwrap_or_default()
    )
}

fn kind_name(code: i32) -> &'static str {
    RecordKind::from_code(code).map(|k| k.name()).unwrap_or("?")
}

fn basis(e: &v1::TimelineEntry) -> String {
    match e
        .basis
        .as_ref()
        .map(|b| (v1::AccessBasis::try_from(b.basis), &b.source_event_id))
    {
        Some((Ok(v1::AccessBasis::Author), _)) => "author".into(),
        Some((Ok(v1::AccessBasis::Consent), id)) => {
            let form = match e.basis.as_ref().map(|b| v1::ConsentForm::try_from(b.form)) {
                Some(Ok(v1::ConsentForm::PatientSigned)) => "patient-signed",
                Some(Ok(v1::ConsentForm::Attested)) => "attested",
                _ => "consent",
            };
            format!("{form} …{}", short(id))
        }
        Some((Ok(v1::AccessBasis::BreakGlass), id)) => format!("break-glass …{}", short(id)),
        _ => "?".into(),
    }
}

/// The last 6 characters of an event id: enough to tell the demo's events apart (the
/// leading ones of UUIDv7s made in the same second are equal).
fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(6)..]
}

fn date(t: Option<prost_types::Timestamp>) -> String {
    t.and_then(|t| Timestamp::new(t.seconds, t.nanos).ok())
        .map(|t| t.to_rfc3339()[..10].to_owned())
        .unwrap_or_default()
}

fn print_entries(entries: &[v1::TimelineEntry]) {
    for e in entries {
        println!(
            "    {}  {:<18} from {}  {:<16} {}",
            date(e.occurred_at),
            kind_name(e.kind),
            e.facility_id,
            basis(e),
            summary(e)
        );
    }
}

async fn timeline(
    reader: &FacilityClient,
    patient: &str,
    purpose: Purpose,
) -> anyhow::Result<v1::GetTimelineResponse> {
    Ok(reader
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: patient.into(),
            purpose: purpose.code(),
            page_size: 50,
            ..Default::default()
        })
        .await?
        .into_inner())
}

async fn emit_all(
    f: &mut FacilityClient,
    bodies: Vec<v1::facility_event::Body>,
) -> anyhow::Result<usize> {
    let envelopes: Vec<_> = bodies.into_iter().map(|b| f.sign(b).1).collect();
    let results = f.submit(envelopes).await?;
    let ok = results
        .iter()
        .filter(|r| r.status == v1::SubmitStatus::Accepted as i32)
        .count();
    if ok != results.len() {
        bail!(
            "{} of {} demo events were not accepted",
            results.len() - ok,
            results.len()
        );
    }
    Ok(ok)
}

async fn settle(nc: &NationalCenter) -> anyhow::Result<()> {
    if !nc.settle(Duration::from_secs(10)).await? {
        bail!("the projector did not catch up");
    }
    Ok(())
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir()?;
    let dir = match &a.keep {
        Some(d) => {
            hrx_node::keys::create_private_dir(d)?;
            d.clone()
        }
        None => tmp.path().to_owned(),
    };
    super::runtime()?.block_on(async move {
        let node = Node::build(NodeConfig::ephemeral(&dir)).await?;
        let addr = node.grpc_addr();
        let patient_addr = node.patient_addr();
        println!("== hrx demo: one embedded node in {}", dir.display());
        println!("   national root key {}", node.root_key_id());
        println!(
            "   gRPC with mutual TLS on {addr}; the patients' port (TLS, their signatures) on {patient_addr}"
        );
        println!("   metrics on http://{}/metrics\n", node.metrics_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        let result = story(&dir, addr, patient_addr).await;
        let _ = stop.send(());
        running.await.context("node task")??;
        result?;
        println!("\n== done: the node stopped cleanly.");
        if let Some(d) = &a.keep {
            println!(
                "   data kept in {}; try `hrx reproject --data-dir {}`",
                d.display(),
                d.display()
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Reads the next timeline entry of a follow stream (skipping heartbeats).
async fn next_entry(
    stream: &mut tonic::Streaming<v1::FollowResponse>,
) -> anyhow::Result<v1::TimelineEntry> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .map_err(|_| anyhow!("the follow stream stalled"))?
            .ok_or_else(|| anyhow!("the follow stream closed"))??;
        if let Some(v1::follow_response::Item::Entry(e)) = item.item {
            return Ok(e);
        }
    }
}

/// Registers the demo's facilities.
async fn register(nc: &NationalCenter) -> anyhow::Result<()> {
    println!("== 1. The National Center registers four facilities (root-signed registry events)");
    for (id, name, province, level) in [
        (
            DISTRICT,
            "Trung tâm Y tế khu vực Vĩnh Tường (district hospital)",
            "Phú Thọ",
            FacilityLevel::Basic,
        ),
        (
            PROVINCIAL,
            "Bệnh viện Đa khoa tỉnh Phú Thọ (provincial hospital)",
            "Phú Thọ",
            FacilityLevel::Specialized,
        ),
        (
            CLINIC,
            "Phòng khám Nội tiết – Đái tháo đường (diabetes clinic)",
            "Phú Thọ",
            FacilityLevel::Initial,
        ),
        (
            UNRELATED,
            "Phòng khám đa khoa tư nhân Sài Gòn (unrelated private clinic)",
            "Hồ Chí Minh",
            FacilityLevel::Initial,
        ),
    ] {
        let r = nc
            .register_facility(&fac(id), name, province, level)
            .await?;
        println!("   {id}  {name}\n          signing key {}", r.key_id);
    }
    Ok(())
}

/// The district hospital's records for the demo's patients.
async fn district_records(district: &mut FacilityClient) -> anyhow::Result<()> {
    println!(
        "\n== 2. The district hospital emits signed FHIR records (one hash chain, Ed25519/DSSE)"
    );
    let [(an, an_name), (binh, binh_name), (cuong, cuong_name)] = PATIENTS;
    let n = emit_all(
        district,
        vec![
            encounter(an, "2026-10-02T01:30:00Z", "Khám định kỳ đái tháo đường"),
            condition(
                an,
                "2026-10-02T01:45:00Z",
                "E11.9",
                "Đái tháo đường type 2 (E11.9)",
            ),
            lab(
                an,
                "2026-10-02T02:10:00Z",
                "4548-4",
                "HbA1c (LOINC 4548-4)",
                8.1,
                "%",
            ),
            medication(
                an,
                "2026-10-02T02:30:00Z",
                "A10BA02",
                "Metformin 850 mg x 2/ngày",
            ),
            referral(an, "2026-11-18T03:00:00Z"),
            encounter(binh, "2026-11-03T01:00:00Z", "Đau ngực, khó thở"),
            condition(
                binh,
                "2026-11-03T01:20:00Z",
                "I10",
                "Tăng huyết áp vô căn (I10)",
            ),
            lab(
                binh,
                "2026-11-03T01:25:00Z",
                "8480-6",
                "Huyết áp tâm thu (LOINC 8480-6)",
                165.0,
                "mmHg",
            ),
            condition(cuong, "2026-09-15T02:00:00Z", "A15.0", "Lao phổi (A15.0)"),
        ],
    )
    .await?;
    println!("   {n} records accepted for {an_name}, {binh_name} and {cuong_name}");
    let (_, bad) = district
        .emit(record(
            an,
            RecordKind::Observation,
            "2026-11-18T03:00:00Z",
            json!({"resourceType": "Condition", "subject": patient_ref(an)}),
        ))
        .await?;
    let rej = bad.rejection.clone().unwrap_or_default();
    println!(
        "   one malformed record is refused: {} [{}] (it still extends the chain: {})",
        Reason::from_code(rej.reason)
            .map(|r| r.name())
            .unwrap_or("?"),
        rej.field,
        bad.extends_chain
    );
    Ok(())
}

async fn story(
    dir: &std::path::Path,
    addr: std::net::SocketAddr,
    patient_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let nc = NationalCenter::open(dir, addr).await?;
    register(&nc).await?;
    let mut district = FacilityClient::open(dir, addr, &fac(DISTRICT)).await?;
    let mut provincial = FacilityClient::open(dir, addr, &fac(PROVINCIAL)).await?;
    let mut clinic = FacilityClient::open(dir, addr, &fac(CLINIC)).await?;
    let mut unrelated = FacilityClient::open(dir, addr, &fac(UNRELATED)).await?;
    district_records(&mut district).await?;
    settle(&nc).await?;
    let [(an, an_name), _, (cuong, cuong_name)] = PATIENTS;
    let an_id = hrx_domain::PatientId::parse(an).expect("a demo patient id");

    println!(
        "\n== 3. {an_name} enrolls their own key (phone app) at the district hospital, in person"
    );
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8()?)?;
    let (_, r) = district
        .emit(enrollment(&an_id, &key, &fac(DISTRICT), Timestamp::now()))
        .await?;
    accepted(&r, "the enrollment")?;
    settle(&nc).await?;
    let ca = std::fs::read_to_string(dir.join("tls").join("ca.pem"))?;
    let app = PatientClient::new(
        an_id.clone(),
        key,
        connect_patient_port(patient_addr, &ca).await?,
    );
    println!(
        "   key {}… enrolled: a proof of possession signed by the patient's key, carried in a district-signed event",
        &app.key().key_id().as_str()[..16]
    );
    println!(
        "   the app talks to the patients' port: no certificate, every call signed by the patient"
    );

    println!("\n== 4. Referral: the provincial hospital opens {an_name}'s history");
    let refused = provincial
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: an.into(),
            purpose: Purpose::Referral.code(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow!("a facility with no basis was answered"))?;
    println!(
        "   without consent: {:?}, no records and no counts (deny by default)",
        refused.code()
    );
    let (request_id, r) = provincial
        .emit(consent_request(
            an,
            &[Purpose::Referral, Purpose::Treatment],
            30,
            "Chuyển tuyến: khám chuyên khoa nội tiết",
        ))
        .await?;
    accepted(&r, "the consent request")?;
    settle(&nc).await?;
    let view = app.view(1, "").await?;
    let pending = view
        .requests
        .iter()
        .find(|q| q.request_event_id == request_id.to_string())
        .ok_or_else(|| anyhow!("the patient does not see the request"))?;
    println!(
        "   the provincial hospital asks for REFERRAL,TREATMENT for 30 days; {an_name}'s app shows it pending"
    );
    let (grant_id, r) = app.approve(pending).await?;
    accepted(&r, "the approval")?;
    settle(&nc).await?;
    println!(
        "   {an_name} approves with their own key: grant …{} (patient-signed, names the request)",
        short(&grant_id.to_string())
    );
    let page = timeline(&provincial, an, Purpose::Referral).await?;
    println!(
        "   with consent: {} records shown, {} withheld:",
        page.entries.len(),
        page.withheld_count
    );
    print_entries(&page.entries);

    println!("\n== 5. An unrelated private clinic tries to grant itself access to {an_name}");
    for (what, body) in [
        (
            "a self-attested grant",
            attested_grant(an, UNRELATED, &[Purpose::Treatment], 30),
        ),
        (
            "a grant to any facility",
            v1::facility_event::Body::ConsentGrant(v1::ConsentGrant {
                grantee: Some(v1::consent_grant::Grantee::AnyFacility(true)),
                ..grant_terms(an, UNRELATED, &[Purpose::Treatment], 30, true)
            }),
        ),
    ] {
        let (_, r) = unrelated.emit(body).await?;
        println!("   {what}: refused, {}", rejection_text(&r));
    }
    let refused = unrelated
        .timeline()
        .get_timeline(v1::GetTimelineRequest {
            patient_id: an.into(),
            purpose: Purpose::Treatment.code(),
            ..Default::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow!("the unrelated clinic was answered"))?;
    println!("   and its read: {:?} (audited as refused)", refused.code());

    println!("\n== 6. {cuong_name} has no app: the district hospital attests a paper consent form");
    let (_, r) = district
        .emit(attested_grant(cuong, CLINIC, &[Purpose::ChronicCare], 90))
        .await?;
    accepted(&r, "the attested grant")?;
    let (_, r) = district
        .emit(attested_grant(cuong, CLINIC, &[Purpose::ChronicCare], 365))
        .await?;
    println!(
        "   90 days for the diabetes clinic: accepted (attested, shown to the patient and the national center)"
    );
    println!("   365 days: refused, {}", rejection_text(&r));

    println!(
        "\n== 7. The diabetes clinic follows {an_name} live (CHRONIC_CARE, granted by the patient's app)"
    );
    let (_, r) = app
        .state(patient_grant(an, CLINIC, &[Purpose::ChronicCare], 365))
        .await?;
    accepted(&r, "the clinic's grant")?;
    settle(&nc).await?;
    let mut stream = clinic
        .timeline()
        .follow(v1::FollowRequest {
            patient_id: an.into(),
            purpose: Purpose::ChronicCare.code(),
            ..Default::default()
        })
        .await?
        .into_inner();
    for _ in 0..5 {
        next_entry(&mut stream).await?;
    }
    println!("   backlog delivered: 5 records");
    let sent = Instant::now();
    district
        .emit(lab(
            an,
            "2026-11-25T02:00:00Z",
            "4548-4",
            "HbA1c (LOINC 4548-4)",
            7.4,
            "%",
        ))
        .await?;
    let e = next_entry(&mut stream).await?;
    println!(
        "   live: {} {} delivered {} ms after submission",
        kind_name(e.kind),
        summary(&e),
        sent.elapsed().as_millis()
    );
    drop(stream);
    // Something the clinic wrote itself, so that it appears as an author below.
    clinic
        .emit(lab(
            an,
            "2026-11-26T02:00:00Z",
            "2345-7",
            "Glucose (LOINC 2345-7)",
            7.9,
            "mmol/L",
        ))
        .await?;

    println!(
        "\n== 8. Break-glass: {an_name} arrives unconscious at the provincial emergency department"
    );
    let mut monitor = v1::monitor_service_client::MonitorServiceClient::new(nc.channel());
    let mut alerts = monitor
        .watch_break_glass(v1::ListBreakGlassRequest::default())
        .await?
        .into_inner();
    let (glass, r) = provincial
        .emit(v1::facility_event::Body::BreakGlass(
            v1::BreakGlassDeclaration {
                patient_id: an.into(),
                reason: "Bệnh nhân hôn mê, không thể lấy đồng ý".into(),
                clinician: "CCHN-009921".into(),
                duration: Some(prost_types::Duration {
                    seconds: 4 * 3600,
                    nanos: 0,
                }),
            },
        ))
        .await?;
    accepted(&r, "the break-glass declaration")?;
    let alert = tokio::time::timeout(Duration::from_secs(5), alerts.next())
        .await
        .map_err(|_| anyhow!("no break-glass alert within 5 s"))?
        .ok_or_else(|| anyhow!("the alert stream closed"))??;
    println!(
        "   alert at the National Center: {} by {} (clinician {}), \"{}\"",
        short(&alert.event_id),
        alert.facility_id,
        alert.clinician,
        alert.reason
    );
    let page = timeline(&provincial, an, Purpose::Emergency).await?;
    println!(
        "   declared …{} for 4 h, EMERGENCY reads only: {} records shown",
        short(&glass.to_string()),
        page.entries.len()
    );
    let (_, again) = provincial
        .emit(v1::facility_event::Body::BreakGlass(
            v1::BreakGlassDeclaration {
                patient_id: an.into(),
                reason: "Khai báo lần hai".into(),
                clinician: "CCHN-009921".into(),
                duration: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        ))
        .await?;
    println!(
        "   a second window for the same patient: refused, {}",
        rejection_text(&again)
    );

    println!("\n== 9. {an_name} opens their own view (a signed, single-use request)");
    crate::cli::patient::print_view(&app.view_all().await?);

    println!("\n== 10. The National Center's monitor (metadata only)");
    monitor_report(&mut monitor).await
}

async fn monitor_report(
    monitor: &mut v1::monitor_service_client::MonitorServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<()> {
    for s in monitor
        .list_facility_stats(v1::ListFacilityStatsRequest {})
        .await?
        .into_inner()
        .facilities
    {
        let rejected: Vec<String> = s
            .rejected
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    Reason::from_code(r.reason).map(|x| x.name()).unwrap_or("?"),
                    r.count
                )
            })
            .collect();
        println!(
            "   facility {}: {} accepted, head seq {}, rejected: {}",
            s.facility_id,
            s.accepted,
            s.head_seq,
            if rejected.is_empty() {
                "none".to_owned()
            } else {
                rejected.join(", ")
            }
        );
    }
    for c in monitor
        .get_exchange_matrix(v1::GetExchangeMatrixRequest::default())
        .await?
        .into_inner()
        .cells
    {
        println!(
            "   {} read {} records authored by {} ({} reads)",
            c.reader_facility_id, c.records, c.author_facility_id, c.accesses
        );
    }
    for g in monitor
        .list_attested_grants(v1::ListAttestedGrantsRequest::default())
        .await?
        .into_inner()
        .grants
    {
        println!(
            "   attested grant …{} by {} for {}, expires {}",
            short(&g.grant_event_id),
            g.facility_id,
            g.grantee_facility_id,
            date(g.expires_at)
        );
    }
    for u in monitor
        .list_break_glass(v1::ListBreakGlassRequest::default())
        .await?
        .into_inner()
        .uses
    {
        println!(
            "   break-glass by {} (clinician {}), {} reads",
            u.facility_id, u.clinician, u.reads
        );
    }
    let lag = monitor
        .get_projector_lag(v1::GetProjectorLagRequest {})
        .await?
        .into_inner();
    for p in lag.partitions {
        println!(
            "   projector: {} of {} log entries projected",
            p.projected, p.log_end
        );
    }
    Ok(())
}
