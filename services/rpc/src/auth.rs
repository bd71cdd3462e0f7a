//! The calling principal and the checks every service makes with it.

use hrx_domain::FacilityId;
pub use hrx_identity::Principal;

use crate::error::RequestError;

/// The caller, from its client certificate (UNAUTHENTICATED without one).
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    hrx_identity::caller(request)
}

/// The caller must be a facility (reads and submissions are made by facilities).
pub fn facility(principal: &Principal) -> Result<FacilityId, RequestError> {
    match principal {
        Principal::Facility(f) => Ok(f.clone()),
        Principal::NationalCenter => Err(RequestError::PermissionDenied(
            "the national center sees metadata only; this call is for facilities",
        )),
    }
}

/// The caller must be the national center.
pub fn national_center(principal: &Principal) -> Result<(), RequestError> {
    match principal {
        Principal::NationalCenter => Ok(()),
        Principal::Facility(_) => Err(RequestError::PermissionDenied(
            "only the national center may call this",
        )),
    }
}
