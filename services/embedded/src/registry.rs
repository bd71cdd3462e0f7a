//! [`RegistryStore`]: facilities and their keys as the registry chain declared them;
//! and the key writes of a projection batch.

use async_trait::async_trait;
use hrx_domain::event::CertificateSerial;
use hrx_domain::verify::{KeyOwner, KeyRecord};
use hrx_domain::{FacilityId, FacilityLevel, KeyId, PublicKey, Timestamp};
use hrx_ports::{FacilityInfo, KeyInfo, PortResult, RegistryStore, RevokedCertificate};
use rusqlite::{Connection, Transaction, params};

use crate::SqliteNode;
use crate::codec::{self, Cols};
use crate::error::{EmbeddedError, Result};

/// How the owner column spells the national root key (a facility id is five digits, so
/// the two cannot collide).
const ROOT: &str = "root";

fn owner_text(o: &KeyOwner) -> &str {
    match o {
        KeyOwner::Facility(f) => f.as_str(),
        KeyOwner::Root => ROOT,
    }
}

/// A key added by the registry. A second `KeyAdded` for a registered key id changes
/// nothing: re-adding must not undo a revocation or move a key to another facility,
/// and failing the batch instead would stop projection for good (the registry event is
/// in the log and would be replayed forever). It is logged for the operators.
pub(crate) fn insert_key(tx: &Transaction<'_>, k: &KeyRecord) -> Result<()> {
    let (valid_s, valid_ns) = codec::ts(k.valid_from);
    let (revoked_s, revoked_ns) = codec::opt_ts(k.revoked_at);
    let key_id = k.key_id();
    let inserted = tx
        .prepare_cached(
            "INSERT INTO keys (key_id, public_key, owner, valid_from_s, valid_from_ns, \
             revoked_s, revoked_ns, registered_seq, revoked_seq) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (key_id) DO NOTHING",
        )?
        .execute(params![
            key_id.as_str(),
            k.public_key.as_bytes(),
            owner_text(&k.owner),
            valid_s,
            valid_ns,
            revoked_s,
            revoked_ns,
            codec::int(k.registered_seq, "registry seq")?,
            k.revoked_seq
                .map(|s| codec::int(s, "registry seq"))
                .transpose()?,
        ])?;
    if inserted == 0 {
        tracing::warn!(key_id = %key_id, "registry re-added a registered key; kept the first");
    }
    Ok(())
}

/// Revokes a key. The first revocation stands (its time must not move). A revocation of
/// a key the registry never added changes nothing and is logged, for the same reason a
/// re-added key is not an error.
pub(crate) fn revoke_key(
    tx: &Transaction<'_>,
    key: &KeyId,
    at: Timestamp,
    seq: u64,
    reason: &str,
) -> Result<()> {
    let (s, ns) = codec::ts(at);
    let changed = tx
        .prepare_cached(
            "UPDATE keys SET revoked_s = ?1, revoked_ns = ?2, revocation_reason = ?3, \
             revoked_seq = ?5 WHERE key_id = ?4 AND revoked_s IS NULL",
        )?
        .execute(params![
            s,
            ns,
            reason,
            key.as_str(),
            codec::int(seq, "registry seq")?
        ])?;
    if changed == 0 {
        tracing::warn!(key_id = %key, "registry revoked a key that is unknown or already revoked");
    }
    Ok(())
}

const KEY_COLUMNS: &str = "key_id, public_key, owner, valid_from_s, valid_from_ns, revoked_s, \
     revoked_ns, revocation_reason, registered_seq, revoked_seq";

fn decode_key(c: &mut Cols<'_, '_>) -> Result<KeyInfo> {
    let key_id = c.text()?;
    let public_key = PublicKey::from_slice(&c.blob()?)
        .ok_or_else(|| EmbeddedError::Corrupt(format!("key {key_id} is not 32 bytes")))?;
    // The id is derived from the key; a mismatch means the row was altered.
    if public_key.key_id().as_str() != key_id {
        return Err(EmbeddedError::Corrupt(format!(
            "key {key_id} is stored with another public key"
        )));
    }
    let owner =
        match c.text()?.as_str() {
            ROOT => KeyOwner::Root,
            f => KeyOwner::Facility(FacilityId::parse(f).map_err(|_| {
                EmbeddedError::Corrupt(format!("key {key_id} has an unknown owner"))
            })?),
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
/// Records a revoked certificate; a serial already revoked keeps its first row.
pub(crate) fn revoke_certificate(tx: &Transaction<'_>, c: &RevokedCertificate) -> Result<()> {
    let (s, ns) = codec::ts(c.revoked_at);
    tx.prepare_cached(
        "INSERT INTO revoked_certificates \
           (serial, principal, revoked_s, revoked_ns, reason, registry_seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (serial) DO NOTHING",
    )?
    .execute(params![
        c.serial.as_str(),
        c.principal,
        s,
        ns,
        c.reason,
        codec::int(c.registry_seq, "registry seq")?
    ])?;
    Ok(())
}

fn revoked_certificates(conn: &Connection) -> Result<Vec<RevokedCertificate>> {
    let mut stmt = conn.prepare_cached(
        "SELECT serial, principal, revoked_s, revoked_ns, reason, registry_seq \
         FROM revoked_certificates ORDER BY registry_seq, serial",
    )?;
    codec::collect(&mut stmt, [], |c| {
        let serial = c.text()?;
        Ok(RevokedCertificate {
            serial: CertificateSerial::parse(&serial).map_err(|_| {
                EmbeddedError::Corrupt("revoked_certificates.serial is not a serial".into())
            })?,
            principal: c.text()?,
            revoked_at: c.ts()?,
            reason: c.text()?,
            registry_seq: c.u64()?,
        })
    })
}

pub(crate) fn all_keys(conn: &Connection) -> Result<Vec<KeyInfo>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys ORDER BY rowid"))?;
    codec::collect(&mut stmt, [], decode_key)
}

fn facility_keys(conn: &Connection, f: &FacilityId) -> Result<Vec<KeyInfo>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM keys WHERE owner = ?1 ORDER BY rowid"
    ))?;
    codec::collect(&mut stmt, [f.as_str()], decode_key)
}

fn decode_facility(c: &mut Cols<'_, '_>) -> Result<FacilityInfo> {
    Ok(FacilityInfo {
        facility_id: c.facility()?,
        name: c.text()?,
        province: c.text()?,
        level: c.code(FacilityLevel::from_code)?,
    })
}

#[async_trait]
impl RegistryStore for SqliteNode {
    /// Ordered by facility id.
    async fn facilities(&self) -> PortResult<Vec<FacilityInfo>> {
        Ok(self
            .inner
            .db
            .read(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT facility_id, name, province, level FROM facilities \
                     ORDER BY facility_id",
                )?;
                codec::collect(&mut stmt, [], decode_facility)
            })
            .await?)
    }

    async fn facility(&self, id: &FacilityId) -> PortResult<Option<FacilityInfo>> {
        let id = id.clone();
        Ok(self
            .inner
            .db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT facility_id, name, province, level FROM facilities \
                     WHERE facility_id = ?1",
                )?;
                codec::first(&mut stmt, [id.as_str()], decode_facility)
            })
            .await?)
    }

    /// In registration order.
    async fn keys(&self, facility: Option<&FacilityId>) -> PortResult<Vec<KeyInfo>> {
        let facility = facility.cloned();
        Ok(self
            .inner
            .db
            .read(move |conn| match &facility {
                Some(f) => facility_keys(conn, f),
                None => all_keys(conn),
            })
            .await?)
    }

    async fn revoked_certificates(&self) -> PortResult<Vec<RevokedCertificate>> {
        Ok(self.inner.db.read(|c| revoked_certificates(c)).await?)
    }
}
