"""Independent Python reference implementation of the hrx wire contract.

Written from the contract alone (proto/hrx/v1/*.proto, tests/vectors/README.md and the
design brief, section 4), not ported from the Rust code, so that the test vectors are
checked by two implementations that can disagree.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = REPO_ROOT / "proto"
VECTORS_DIR = REPO_ROOT / "tests" / "vectors"

FACILITY_EVENT_TYPE = "application/vnd.hrx.facility-event.v1+protobuf"
REGISTRY_EVENT_TYPE = "application/vnd.hrx.registry-event.v1+protobuf"
PATIENT_STATEMENT_TYPE = "application/vnd.hrx.patient-statement.v1+protobuf"
PATIENT_KEY_PROOF_TYPE = "application/vnd.hrx.patient-key-proof.v1+protobuf"
PATIENT_REQUEST_TYPE = "application/vnd.hrx.patient-request.v1+protobuf"
KNOWN_PAYLOAD_TYPES = (
    FACILITY_EVENT_TYPE,
    REGISTRY_EVENT_TYPE,
    PATIENT_STATEMENT_TYPE,
    PATIENT_KEY_PROOF_TYPE,
    PATIENT_REQUEST_TYPE,
)
