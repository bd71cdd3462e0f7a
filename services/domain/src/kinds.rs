//! The closed vocabularies of the contract: record kinds (with their FHIR resource
//! types), sensitivity labels, purposes and facility levels. Numeric codes are the
//! protobuf enum values of `proto/hrx/v1/common.proto`; 0 (unspecified) is never valid.

use std::fmt;

macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $code:literal => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub enum $name {
            $($variant = $code),+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// From the wire code; `None` for 0 and for codes this version doesn't know.
            pub fn from_code(code: i32) -> Option<Self> {
                match code {
                    $($code => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn code(self) -> i32 {
                self as i32
            }

            /// The name without the protobuf prefix, e.g. `OBSERVATION`.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Parses the name without prefix (case-insensitive).
            pub fn from_name(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(s))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

wire_enum!(
    /// What a record is.
    RecordKind {
        Encounter = 1 => "ENCOUNTER",
        Condition = 2 => "CONDITION",
        Observation = 3 => "OBSERVATION",
        DiagnosticReport = 4 => "DIAGNOSTIC_REPORT",
        ImagingStudy = 5 => "IMAGING_STUDY",
        MedicationRequest = 6 => "MEDICATION_REQUEST",
        Procedure = 7 => "PROCEDURE",
        Allergy = 8 => "ALLERGY",
        Immunization = 9 => "IMMUNIZATION",
        Referral = 10 => "REFERRAL",
        Document = 11 => "DOCUMENT",
    }
);

impl RecordKind {
    /// The FHIR R4 resource type a record of this kind carries.
    pub fn fhir_resource_type(self) -> &'static str {
        match self {
            RecordKind::Encounter => "Encounter",
            RecordKind::Condition => "Condition",
            RecordKind::Observation => "Observation",
            RecordKind::DiagnosticReport => "DiagnosticReport",
            RecordKind::ImagingStudy => "ImagingStudy",
            RecordKind::MedicationRequest => "MedicationRequest",
            RecordKind::Procedure => "Procedure",
            RecordKind::Allergy => "AllergyIntolerance",
            RecordKind::Immunization => "Immunization",
            RecordKind::Referral => "ServiceRequest",
            RecordKind::Document => "DocumentReference",
        }
    }

    /// The FHIR element that names the patient: `patient` for AllergyIntolerance and
    /// Immunization, `subject` for the others.
    pub fn fhir_patient_element(self) -> &'static str {
        match self {
            RecordKind::Allergy | RecordKind::Immunization => "patient",
            _ => "subject",
        }
    }
}

wire_enum!(
    /// Labels that keep a record out of a grant unless the grant names them.
    SensitivityLabel {
        Hiv = 1 => "HIV",
        MentalHealth = 2 => "MENTAL_HEALTH",
        Reproductive = 3 => "REPRODUCTIVE",
        SubstanceUse = 4 => "SUBSTANCE_USE",
        Genetic = 5 => "GENETIC",
    }
);

wire_enum!(
    /// Why a facility reads a patient's records.
    Purpose {
        Treatment = 1 => "TREATMENT",
        Referral = 2 => "REFERRAL",
        ChronicCare = 3 => "CHRONIC_CARE",
        Emergency = 4 => "EMERGENCY",
        PatientRequest = 5 => "PATIENT_REQUEST",
        PublicHealth = 6 => "PUBLIC_HEALTH",
    }
);

wire_enum!(
    /// Technical level of a facility (Law on Medical Examination and Treatment 2023).
    FacilityLevel {
        Initial = 1 => "INITIAL",
        Basic = 2 => "BASIC",
        Specialized = 3 => "SPECIALIZED",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for k in RecordKind::ALL {
            assert_eq!(RecordKind::from_code(k.code()), Some(*k));
            assert_eq!(RecordKind::from_name(k.name()), Some(*k));
        }
        assert_eq!(RecordKind::from_code(0), None);
        assert_eq!(RecordKind::from_code(12), None);
        assert_eq!(RecordKind::Referral.fhir_resource_type(), "ServiceRequest");
        assert_eq!(RecordKind::Allergy.fhir_patient_element(), "patient");
    }
}
