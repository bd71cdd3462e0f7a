//! Synthetic FHIR R4 resources of 0.5–4 KB: ICD-10 Conditions, LOINC Observations,
//! MedicationRequests and Encounters, with Vietnamese clinical text, about one patient.
//! Every body passes the exchange's content rules (resource type of the kind, `subject`
//! naming the patient).

use hrx_domain::{RecordKind, Timestamp};
use serde_json::{Value, json};

use crate::rng::Rng;

/// Smallest and largest body the generator aims for, in bytes.
pub const MIN_BODY: usize = 500;
pub const MAX_BODY: usize = 4000;

/// ICD-10 codes: (code, English display, Vietnamese text).
const ICD10: &[(&str, &str, &str)] = &[
    (
        "E11.9",
        "Type 2 diabetes mellitus without complications",
        "Đái tháo đường type 2 không biến chứng",
    ),
    (
        "I10",
        "Essential (primary) hypertension",
        "Tăng huyết áp vô căn (nguyên phát)",
    ),
    (
        "J18.9",
        "Pneumonia, unspecified organism",
        "Viêm phổi, tác nhân không xác định",
    ),
    (
        "N18.3",
        "Chronic kidney disease, stage 3",
        "Bệnh thận mạn giai đoạn 3",
    ),
    (
        "J44.9",
        "Chronic obstructive pulmonary disease, unspecified",
        "Bệnh phổi tắc nghẽn mạn tính",
    ),
    (
        "K29.7",
        "Gastritis, unspecified",
        "Viêm dạ dày, không đặc hiệu",
    ),
    (
        "A90",
        "Dengue fever [classical dengue]",
        "Sốt xuất huyết Dengue",
    ),
    (
        "I25.1",
        "Atherosclerotic heart disease",
        "Bệnh tim do xơ vữa động mạch",
    ),
    (
        "E78.5",
        "Hyperlipidaemia, unspecified",
        "Rối loạn lipid máu",
    ),
    ("M17.9", "Gonarthrosis, unspecified", "Thoái hóa khớp gối"),
];

/// LOINC observations: (code, display, Vietnamese, unit, low, high, normal low, normal high).
type Loinc = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    f64,
    f64,
    f64,
    f64,
);
const LOINC: &[Loinc] = &[
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "HbA1c",
        "%",
        5.0,
        11.5,
        4.0,
        6.0,
    ),
    (
        "2345-7",
        "Glucose [Mass/volume] in Serum or Plasma",
        "Glucose máu lúc đói",
        "mmol/L",
        4.0,
        14.0,
        3.9,
        6.4,
    ),
    (
        "8480-6",
        "Systolic blood pressure",
        "Huyết áp tâm thu",
        "mm[Hg]",
        100.0,
        180.0,
        90.0,
        139.0,
    ),
    (
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "Creatinin huyết thanh",
        "umol/L",
        50.0,
        250.0,
        62.0,
        120.0,
    ),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "Cholesterol toàn phần",
        "mmol/L",
        3.0,
        8.0,
        3.9,
        5.2,
    ),
    (
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "Huyết sắc tố",
        "g/L",
        80.0,
        170.0,
        120.0,
        160.0,
    ),
    (
        "777-3",
        "Platelets [#/volume] in Blood by Automated count",
        "Số lượng tiểu cầu",
        "10*9/L",
        20.0,
        450.0,
        150.0,
        400.0,
    ),
];

/// Medicines: (ATC code, Vietnamese name and strength, dosage text).
const MEDICINES: &[(&str, &str, &str)] = &[
    (
        "A10BA02",
        "Metformin 500 mg viên nén",
        "Uống 1 viên x 2 lần/ngày, sau ăn sáng và tối",
    ),
    (
        "C08CA01",
        "Amlodipin 5 mg viên nén",
        "Uống 1 viên/ngày vào buổi sáng",
    ),
    (
        "C09AA02",
        "Enalapril 10 mg viên nén",
        "Uống 1 viên x 2 lần/ngày",
    ),
    (
        "C10AA05",
        "Atorvastatin 20 mg viên nén",
        "Uống 1 viên/ngày vào buổi tối",
    ),
    (
        "A10AB01",
        "Insulin human 100 IU/ml bút tiêm",
        "Tiêm dưới da 10 đơn vị trước ăn sáng",
    ),
    (
        "J01CA04",
        "Amoxicilin 500 mg viên nang",
        "Uống 1 viên x 3 lần/ngày trong 7 ngày",
    ),
    (
        "N02BE01",
        "Paracetamol 500 mg viên nén",
        "Uống 1 viên khi sốt trên 38,5°C, cách nhau ít nhất 4 giờ",
    ),
];

/// Sentences of clinical notes, to bring a body to its drawn size.
const NOTES: &[&str] = &[
    "Bệnh nhân tỉnh, tiếp xúc tốt, da niêm mạc hồng, không phù.",
    "Tim đều, phổi không rale, bụng mềm, gan lách không sờ thấy.",
    "Tuân thủ điều trị tốt, đã được tư vấn chế độ ăn giảm muối, giảm đường.",
    "Hẹn tái khám sau 4 tuần, mang theo sổ theo dõi đường huyết tại nhà.",
    "Người bệnh than mệt nhiều về chiều, ngủ kém, ăn uống kém hơn tuần trước.",
    "Đã giải thích tác dụng phụ có thể gặp của thuốc và dấu hiệu cần quay lại ngay.",
    "Kết quả xét nghiệm được bác sĩ điều trị xem và ký xác nhận.",
    "Tiền sử gia đình: mẹ đái tháo đường, bố tăng huyết áp.",
    "Không hút thuốc lá, uống rượu bia thỉnh thoảng, vận động 30 phút mỗi ngày.",
    "Chuyển tuyến trên để đánh giá thêm theo quy định về chuyển người bệnh.",
];

const DOCTORS: &[&str] = &[
    "BS. Nguyễn Văn An",
    "BS.CKI Trần Thị Bích",
    "ThS.BS Lê Hoàng Minh",
    "BS. Phạm Thu Hà",
    "BS.CKII Đỗ Quang Huy",
];

/// The record kinds the generator writes, and their share of the stream.
pub const KINDS: &[(RecordKind, u32)] = &[
    (RecordKind::Observation, 40),
    (RecordKind::Encounter, 25),
    (RecordKind::MedicationRequest, 20),
    (RecordKind::Condition, 15),
];

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

/// A FHIR R4 resource of `kind` about `patient`, of 0.5–4 KB, drawn from `rng`.
pub fn body(
    rng: &mut Rng,
    kind: RecordKind,
    patient: &str,
    facility_name: &str,
    occurred: Timestamp,
) -> Vec<u8> {
    let when = occurred.to_rfc3339();
    let subject = json!({"reference": format!("Patient/{patient}")});
    let doctor = *rng.pick(DOCTORS);
    let id = format!("{:016x}", rng.next_u64());
    let mut resource = match kind {
        RecordKind::Condition => {
            let (code, display, vi) = *rng.pick(ICD10);
            json!({
                "resourceType": "Condition",
                "id": id,
                "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/Condition"]},
                "clinicalStatus": {"coding": [coding(
                    "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active")]},
                "verificationStatus": {"coding": [coding(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed")]},
                "category": [{"coding": [coding(
                    "http://terminology.hl7.org/CodeSystem/condition-category",
                    "encounter-diagnosis", "Encounter Diagnosis")]}],
                "code": {"coding": [coding("http://hl7.org/fhir/sid/icd-10", code, display)], "text": vi},
                "subject": subject,
                "onsetDateTime": when,
                "recordedDate": when,
                "recorder": {"display": doctor},
            })
        }
        RecordKind::Observation => {
            let (code, display, vi, unit, lo, hi, nlo, nhi) = *rng.pick(LOINC);
            let value = ((lo + rng.unit() * (hi - lo)) * 10.0).round() / 10.0;
            let flag = if value > nhi {
                ("H", "High")
            } else if value < nlo {
                ("L", "Low")
            } else {
                ("N", "Normal")
            };
            json!({
                "resourceType": "Observation",
                "id": id,
                "status": "final",
                "category": [{"coding": [coding(
                    "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory", "Laboratory")]}],
                "code": {"coding": [coding("http://loinc.org", code, display)], "text": vi},
                "subject": subject,
                "effectiveDateTime": when,
                "issued": when,
                "performer": [{"display": facility_name}],
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                "interpretation": [{"coding": [coding(
                    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", flag.0, flag.1)]}],
                "referenceRange": [{"low": {"value": nlo, "unit": unit}, "high": {"value": nhi, "unit": unit}}],
            })
        }
        RecordKind::MedicationRequest => {
            let (atc, name, dosage) = *rng.pick(MEDICINES);
            let days = *rng.pick(&[7u64, 14, 28, 30, 90]);
            json!({
                "resourceType": "MedicationRequest",
                "id": id,
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [coding("http://www.whocc.no/atc", atc, name)], "text": name},
                "subject": subject,
                "authoredOn": when,
                "requester": {"display": doctor},
                "dosageInstruction": [{"text": dosage, "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}}}],
                "dispenseRequest": {
                    "expectedSupplyDuration": {"value": days, "unit": "ngày", "system": "http://unitsofmeasure.org", "code": "d"},
                    "quantity": {"value": days * 2, "unit": "viên"}},
            })
        }
        _ => {
            let (code, display, vi) = *rng.pick(ICD10);
            let inpatient = rng.chance(0.2);
            json!({
                "resourceType": "Encounter",
                "id": id,
                "status": "finished",
                "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    if inpatient { "IMP" } else { "AMB" },
                    if inpatient { "inpatient encounter" } else { "ambulatory" }),
                "type": [{"text": if inpatient { "Điều trị nội trú" } else { "Khám ngoại trú" }}],
                "subject": subject,
                "participant": [{"individual": {"display": doctor}}],
                "period": {"start": when, "end": when},
                "reasonCode": [{"coding": [coding("http://hl7.org/fhir/sid/icd-10", code, display)], "text": vi}],
                "serviceProvider": {"display": facility_name},
            })
        }
    };
    let target = rng.range(MIN_BODY as u64, MAX_BODY as u64 - 200) as usize;
    let base = serde_json::to_vec(&resource).map(|b| b.len()).unwrap_or(0);
    // R4's Encounter has no `note`: its text goes into the resource's narrative
    // (`text`, XHTML), which every resource may carry. `"note":[{"text":""}]` costs
    // about 24 bytes, the narrative's wrapping about 100; sentences are added until the
    // target is reached (overshooting by less than one sentence, < 200 bytes).
    let encounter = kind == RecordKind::Encounter;
    let wrapping = if encounter { 100 } else { 24 };
    let room = target.saturating_sub(base + wrapping);
    let mut note = String::new();
    while note.len() < room {
        let s = *rng.pick(NOTES);
        if !note.is_empty() {
            note.push(' ');
        }
        note.push_str(s);
    }
    if note.is_empty() {
    } else if encounter {
        // The sentences hold no XML markup characters, so they go into XHTML as they are.
        resource["text"] = json!({
            "status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{note}</p></div>"),
        });
    } else {
        resource["note"] = json!([{"text": note}]);
    }
    serde_json::to_vec(&resource).expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only elements R4 defines for each resource: an Encounter has no `note` (a HAPI
    /// FHIR server silently drops it), its text is in the narrative.
    #[test]
    fn encounters_carry_their_text_as_a_narrative_not_a_note() {
        let mut rng = Rng::new(3);
        let mut narratives = 0;
        for _ in 0..50 {
            let b = body(
                &mut rng,
                RecordKind::Encounter,
                "026062001234",
                "Bệnh viện",
                Timestamp::from_unix_seconds(1_790_000_000).unwrap(),
            );
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert!(v.get("note").is_none(), "{v}");
            if let Some(div) = v["text"]["div"].as_str() {
                assert!(div.starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">"));
                assert!(div.ends_with("</p></div>"), "{div}");
                narratives += 1;
            }
        }
        assert!(narratives > 0);
        for s in NOTES {
            assert!(!s.contains(['<', '>', '&']), "{s}");
        }
    }

    #[test]
    fn bodies_are_in_range_and_about_the_patient() {
        let mut rng = Rng::new(1);
        let at = Timestamp::parse_rfc3339("2025-03-01T02:00:00Z").unwrap();
        for i in 0..400 {
            let kind = KINDS[i % KINDS.len()].0;
            let b = body(&mut rng, kind, "026062001234", "TTYT Vĩnh Tường", at);
            assert!(
                (MIN_BODY - 100..=MAX_BODY).contains(&b.len()),
                "{kind}: {}",
                b.len()
            );
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["resourceType"], kind.fhir_resource_type());
            assert_eq!(v["subject"]["reference"], "Patient/026062001234");
        }
    }
}
