//! [`ConsentStore`]: a patient's grants and break-glass windows, in projection order;
//! and the grant lookup the projector uses to check a revocation.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use hrx_domain::consent::{BreakGlassWindow, GrantState};
use hrx_domain::event::{ConsentGrant, Evidence, Grantee};
use hrx_domain::{EventId, PatientId, Purpose, RecordKind, SensitivityLabel};
use hrx_ports::{ConsentStore, PortResult};

use crate::PgStore;
use crate::codec::{self, Cols, query};
use crate::error::Result;

const GRANT_COLUMNS: &str = "grant_event_id, patient_id, granted_by, granted_s, granted_ns, \
     grantee, purposes, kinds, include_sensitive, data_from_s, data_from_ns, data_until_s, \
     data_until_ns, expires_s, expires_ns, evidence_form_id, evidence_sha256, revoked_s, \
     revoked_ns";

/// Decodes a row of [`GRANT_COLUMNS`]. The grant's own `patient_id` is the row's: the
/// projector projects a grant under the patient its content names.
fn decode_grant(c: &mut Cols<'_>) -> Result<(PatientId, GrantState)> {
    let grant_event_id = c.event_id()?;
    let patient_id = c.patient()?;
    let granted_by = c.facility()?;
    let granted_at = c.ts()?;
    let grantee = match c.opt_facility()? {
        Some(f) => Grantee::Facility(f),
        None => Grantee::AnyFacility,
    };
    let purposes = c.code_list(Purpose::from_code)?;
    let kinds = c.code_list(RecordKind::from_code)?;
    let include_sensitive = c.code_list(SensitivityLabel::from_code)?;
    let data_from = c.opt_ts()?;
    let data_until = c.opt_ts()?;
    let expires_at = c.ts()?;
    let evidence = Evidence {
        form_id: c.text()?,
        sha256: c.sha256()?,
    };
    let revoked_at = c.opt_ts()?;
    let state = GrantState {
        grant_event_id,
        granted_by,
        granted_at,
        grant: ConsentGrant {
            patient_id: patient_id.clone(),
            grantee,
            purposes,
            kinds,
            include_sensitive,
            data_from,
            data_until,
            expires_at,
            evidence,
        },
        revoked_at,
    };
    Ok((patient_id, state))
}

pub(crate) async fn grant_by_id<C: GenericClient>(
    c: &C,
    grant: &EventId,
) -> Result<Option<(PatientId, GrantState)>> {
    let rows = query(
        c,
        "reading a grant",
        &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE grant_event_id = $1"),
        &[&codec::id(grant)],
    )
    .await?;
    rows.first()
        .map(|r| decode_grant(&mut Cols::new(r)))
        .transpose()
}

/// Columns of a window, for [`decode_window`].
pub(crate) const WINDOW_COLUMNS: &str =
    "b.event_id, b.facility_id, b.declared_s, b.declared_ns, b.expires_s, b.expires_ns";

pub(crate) fn decode_window(c: &mut Cols<'_>) -> Result<BreakGlassWindow> {
    Ok(BreakGlassWindow {
        event_id: c.event_id()?,
        facility_id: c.facility()?,
        declared_at: c.ts()?,
        expires_at: c.ts()?,
    })
}

#[async_trait]
impl ConsentStore for PgStore {
    async fn grants(&self, patient_id: &PatientId) -> PortResult<Vec<GrantState>> {
        let what = "reading grants";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            &format!("SELECT {GRANT_COLUMNS} FROM grants WHERE patient_id = $1 ORDER BY id"),
            &[&patient_id.as_str()],
        )
        .await?;
        Ok(codec::collect(&rows, |c| decode_grant(c).map(|(_, g)| g))?)
    }

    async fn break_glass(&self, patient_id: &PatientId) -> PortResult<Vec<BreakGlassWindow>> {
        let what = "reading break-glass windows";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            &format!(
                "SELECT {WINDOW_COLUMNS} FROM break_glass b WHERE b.patient_id = $1 ORDER BY b.id"
            ),
            &[&patient_id.as_str()],
        )
        .await?;
        Ok(codec::collect(&rows, decode_window)?)
    }
}
