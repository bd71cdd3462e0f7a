//! [`RegistryStore`]: facilities and their keys as the registry chain declared them.
//! (The key writes of a projection batch are in `projection`.)

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use hrx_domain::event::CertificateSerial;
use hrx_domain::verify::{KeyOwner, KeyRecord};
use hrx_domain::{FacilityId, FacilityLevel, PublicKey};
use hrx_ports::{FacilityInfo, KeyInfo, PortResult, RegistryStore, RevokedCertificate};

use crate::PgStore;
use crate::codec::{self, Cols, query};
use crate::error::{PgError, Result};

/// How the owner column spells the national root key (a facility id is five digits, so
/// the two cannot collide).
const ROOT: &str = "root";

pub(crate) fn owner_text(o: &KeyOwner) -> &str {
    match o {
        KeyOwner::Facility(f) => f.as_str(),
        KeyOwner::Root => ROOT,
    }
}

const KEY_COLUMNS: &str = "key_id, public_key, owner, valid_from_s, valid_from_ns, revoked_s, \
     revoked_ns, revocation_reason, registered_seq, revoked_seq";

fn decode_key(c: &mut Cols<'_>) -> Result<KeyInfo> {
    let key_id = c.text()?;
    let public_key = PublicKey::from_slice(&c.blob()?)
        .ok_or_else(|| PgError::Corrupt(format!("key {key_id} is not 32 bytes")))?;
    // The id is derived from the key; a mismatch means the row was altered.
    if public_key.key_id().as_str() != key_id {
        return Err(PgError::Corrupt(format!(
            "key {key_id} is stored with another public key"
        )));
    }
    let owner = match c.text()?.as_str() {
        ROOT => KeyOwner::Root,
        f => KeyOwner::Facility(
            FacilityId::parse(f)
                .map_err(|_| PgError::Corrupt(format!("key {key_id} has an unknown owner")))?,
        ),
    };
    let valid_from = c.ts()?;
    let revoked_at = c.opt_ts()?;
    let revocation_reason = c.opt_text()?;
    Ok(KeyInfo {
        key: KeyRecord {
            public_key,
            owner,
            valid_from,
            revoked_at,
            registered_seq: c.u64()?,
            revoked_seq: c.opt_u64()?,
        },
        revocation_reason,
    })
}

/// Every key, in registration order.
pub(crate) async fn all_keys<C: GenericClient>(c: &C) -> Result<Vec<KeyInfo>> {
    let rows = query(
        c,
        "reading keys",
        &format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY id"),
        &[],
    )
    .await?;
    codec::collect(&rows, decode_key)
}

fn decode_facility(c: &mut Cols<'_>) -> Result<FacilityInfo> {
    Ok(FacilityInfo {
        facility_id: c.facility()?,
        name: c.text()?,
        province: c.text()?,
        level: c.code(FacilityLevel::from_code)?,
    })
}

#[async_trait]
impl RegistryStore for PgStore {
    /// Ordered by facility id.
    async fn facilities(&self) -> PortResult<Vec<FacilityInfo>> {
        let what = "reading facilities";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            "SELECT facility_id, name, province, level FROM facilities ORDER BY facility_id",
            &[],
        )
        .await?;
        Ok(codec::collect(&rows, decode_facility)?)
    }

    async fn facility(&self, id: &FacilityId) -> PortResult<Option<FacilityInfo>> {
        let what = "reading a facility";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            "SELECT facility_id, name, province, level FROM facilities WHERE facility_id = $1",
            &[&id.as_str()],
        )
        .await?;
        Ok(rows
            .first()
            .map(|r| decode_facility(&mut Cols::new(r)))
            .transpose()?)
    }

    /// In registration order.
    async fn keys(&self, facility: Option<&FacilityId>) -> PortResult<Vec<KeyInfo>> {
        let what = "reading keys";
        let client = self.client(what).await?;
        let Some(f) = facility else {
            return Ok(all_keys(&client).await?);
        };
        let rows = query(
            &client,
            what,
            &format!("SELECT {KEY_COLUMNS} FROM keys WHERE owner = $1 ORDER BY id"),
            &[&f.as_str()],
        )
        .await?;
        Ok(codec::collect(&rows, decode_key)?)
    }

    async fn revoked_certificates(&self) -> PortResult<Vec<RevokedCertificate>> {
        let what = "reading revoked certificates";
        let client = self.client(what).await?;
        let rows = query(
            &client,
            what,
            "SELECT serial, principal, revoked_s, revoked_ns, reason, registry_seq \
             FROM revoked_certificates ORDER BY registry_seq, serial",
            &[],
        )
        .await?;
        Ok(codec::collect(&rows, |c| {
            let serial = c.text()?;
            Ok(RevokedCertificate {
                serial: CertificateSerial::parse(&serial).map_err(|_| {
                    PgError::Corrupt("revoked_certificates.serial is not a serial".into())
                })?,
                principal: c.text()?,
                revoked_at: c.ts()?,
                reason: c.text()?,
                registry_seq: c.u64()?,
            })
        })?)
    }
}
