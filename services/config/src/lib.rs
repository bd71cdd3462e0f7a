//! Node configuration: defaults, then a TOML file, then `HRX_*` environment variables
//! (the key in upper case: `HRX_DATA_DIR`, `HRX_GRPC_ADDR`, `HRX_KAFKA_BROKERS`, …),
//! each overriding the last. [`ENV_VARS`] lists every variable; deployment files are
//! checked against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use hrx_domain::consent::ConsentPolicy;
use hrx_domain::verify::ClockPolicy;
use serde::{Deserialize, Serialize};

/// The Kafka TLS settings of a configuration (see [`NodeConfig::kafka_tls_files`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaTlsFiles {
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key.
    pub client_identity: Option<(PathBuf, PathBuf)>,
}

/// Where the log and the store live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite database in the data directory: no external services.
    Embedded,
    /// Apache Kafka for the log, PostgreSQL for the store.
    Distributed,
}

/// A part of the exchange a process runs (`--role`, `HRX_ROLES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Ingest,
    Projector,
    Timeline,
    Consent,
    Registry,
    Monitor,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Ingest,
        Role::Projector,
        Role::Timeline,
        Role::Consent,
        Role::Registry,
        Role::Monitor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Projector => "projector",
            Role::Timeline => "timeline",
            Role::Consent => "consent",
            Role::Registry => "registry",
            Role::Monitor => "monitor",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s.trim())
    }

    /// A comma-separated list, e.g. `ingest,projector`.
    pub fn parse_list(s: &str) -> Result<Vec<Role>, String> {
        let mut roles: Vec<Role> = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| Role::parse(p).ok_or_else(|| format!("unknown role {:?}", p.trim())))
            .collect::<Result<_, _>>()?;
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            return Err("no role given".into());
        }
        Ok(roles)
    }
}

/// Every environment variable a node reads (each overrides the key of the same name).
pub const ENV_VARS: &[&str] = &[
    "HRX_DATA_DIR",
    "HRX_GRPC_ADDR",
    "HRX_METRICS_ADDR",
    "HRX_HEARTBEAT_MS",
    "HRX_PROJECTOR_BATCH",
    "HRX_BACKEND",
    "HRX_ROLES",
    "HRX_KAFKA_BROKERS",
    "HRX_KAFKA_PARTITIONS",
    "HRX_KAFKA_TOPIC_PREFIX",
    "HRX_CONSUMER_GROUP",
    "HRX_KAFKA_CA_FILE",
    "HRX_KAFKA_CERT_FILE",
    "HRX_KAFKA_KEY_FILE",
    "HRX_KAFKA_PROPERTIES",
    "HRX_DATABASE_URL",
    "HRX_DATABASE_POOL_SIZE",
    "HRX_ROOT_PUBLIC_KEY",
    "HRX_TLS_DIR",
    "HRX_PATIENT_ADDR",
    "HRX_ATTESTED_GRANT_MAX_DAYS",
    "HRX_STANDING_WINDOW_DAYS",
    "HRX_BREAK_GLASS_PER_DAY",
    "HRX_BREAK_GLASS_OPEN_PER_PATIENT",
    "HRX_RECORDED_AT_MAX_FUTURE_SECS",
    "HRX_RECORDED_AT_MAX_PAST_SECS",
    "HRX_PROJECTOR_INSTANCE",
    "HRX_KAFKA_SESSION_TIMEOUT_MS",
    "HRX_MAX_MESSAGE_BYTES",
    "HRX_MAX_ENVELOPE_BYTES",
    "HRX_REQUEST_TIMEOUT_MS",
    "HRX_MAX_CONCURRENT_PER_CONNECTION",
    "HRX_MAX_STREAMS_PER_CONNECTION",
    "HRX_MAX_CONCURRENT_PER_CALLER",
    "HRX_MAX_FOLLOW_STREAMS_PER_CALLER",
    "HRX_MAX_CONSENT_EVENTS_PER_PATIENT",
    "HRX_MAX_BREAK_GLASS_WINDOWS_PER_PATIENT",
];

/// Environment variables hrx reads that are not configuration: secrets, read where they
/// are used and never stored with the configuration.
pub const SECRET_ENV_VARS: &[&str] = &[ROOT_PASSPHRASE_VAR, KAFKA_SASL_PASSWORD_VAR];

/// The passphrase of the national root key, for the tools that sign registry changes.
pub const ROOT_PASSPHRASE_VAR: &str = "HRX_ROOT_KEY_PASSPHRASE";

/// The Kafka SASL password (`sasl.password`), when the brokers take SASL.
pub const KAFKA_SASL_PASSWORD_VAR: &str = "HRX_KAFKA_SASL_PASSWORD";

/// Everything a node is configured with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the node keeps its database, keys and certificates.
    pub data_dir: PathBuf,
    /// gRPC (mutual TLS) listen address; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address; port 0 picks a free port.
    pub metrics_addr: SocketAddr,
    /// Heartbeat interval of idle follow streams, in milliseconds.
    pub heartbeat_ms: u64,
    /// Log entries per projector batch.
    pub projector_batch: usize,
    /// Embedded (default) or distributed (Kafka + PostgreSQL).
    pub backend: Backend,
    /// The roles this process runs, comma-separated (default: all of them).
    pub roles: String,
    /// Kafka bootstrap servers, e.g. `kafka-0:9092,kafka-1:9092` (distributed).
    pub kafka_brokers: Option<String>,
    /// Partitions of the facility-events topic when hrx creates it.
    pub kafka_partitions: u32,
    /// Prepended to the topic names (`hrx.facility-events.v1`, `hrx.registry.v1`), to
    /// keep several exchanges (or test runs) apart on one cluster.
    pub kafka_topic_prefix: String,
    /// The projectors' Kafka consumer group.
    pub consumer_group: String,
    /// CA certificate(s) (PEM) that signed the brokers' certificates: set, the Kafka
    /// clients connect over TLS (`security.protocol=ssl`) and verify the brokers.
    pub kafka_ca_file: Option<PathBuf>,
    /// This process's Kafka client certificate (PEM), for brokers that authenticate
    /// clients by certificate and authorize them by ACL. With `kafka_key_file`.
    pub kafka_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `kafka_cert_file`.
    pub kafka_key_file: Option<PathBuf>,
    /// Further librdkafka properties for every Kafka client, applied last: e.g.
    /// `security.protocol = "sasl_ssl"`, `sasl.mechanism`, `sasl.username` (the SASL
    /// password comes from `HRX_KAFKA_SASL_PASSWORD`, never from this file).
    pub kafka_properties: std::collections::BTreeMap<String, String>,
    /// PostgreSQL URL, e.g. `postgres://hrx@db/hrx` (distributed). TLS through libpq's
    /// parameters: `?sslmode=verify-full&sslrootcert=/etc/hrx/db-ca.pem` (and
    /// `sslcert`/`sslkey` for a client certificate); the server is always verified.
    pub database_url: Option<String>,
    /// Connections in this process's PostgreSQL pool.
    pub database_pool_size: usize,
    /// The national root public key (hex), for distributed processes that do not hold
    /// the root private key; embedded nodes read theirs from the data directory.
    pub root_public_key: Option<String>,
    /// The CA, server certificate and keys (default `<data_dir>/tls`).
    pub tls_dir: Option<PathBuf>,
    /// The patient port (TLS without client certificates: `PatientService` only, every
    /// call signed by the patient); port 0 picks a free port. Served by the consent role.
    pub patient_addr: SocketAddr,
    /// Longest expiry of a facility-attested grant, in days (at most 90 by default).
    pub attested_grant_max_days: u32,
    /// A facility has standing for a patient when it authored a record for them within
    /// this many days.
    pub standing_window_days: u32,
    /// Break-glass declarations one facility may make in any 24 hours.
    pub break_glass_per_day: u32,
    /// Break-glass windows one facility may have open for one patient at once.
    pub break_glass_open_per_patient: u32,
    /// How far after the exchange's receive time a facility's recorded_at may lie
    /// (its clock running fast), in seconds.
    pub recorded_at_max_future_secs: u32,
    /// How far before it (a facility sending late, an offline connector), in seconds.
    pub recorded_at_max_past_secs: u32,
    /// This projector replica's stable name in its consumer group (static membership):
    /// restarted under the same name, it takes its partitions back at once. Unique per
    /// replica (a StatefulSet pod's name); unset: dynamic membership.
    pub projector_instance: Option<String>,
    /// How long the projector group waits for a silent replica before moving its
    /// partitions to the others, in milliseconds (bounded below by the brokers'
    /// `group.min.session.timeout.ms`).
    pub kafka_session_timeout_ms: u32,
    /// Largest gRPC request message, in bytes: checked against the message's length
    /// prefix before it is read, so a larger one is refused (OUT_OF_RANGE)
    /// before anything is buffered.
    pub max_message_bytes: usize,
    /// Largest signed envelope (payload and signature), in bytes: a larger one is a
    /// typed rejection (`INVALID_FIELD envelope.payload`) and never reaches the log.
    /// Keep it below the brokers' `message.max.bytes` (1 MiB by default).
    pub max_envelope_bytes: usize,
    /// How long a call may take before it is answered DEADLINE_EXCEEDED (a client's
    /// shorter `grpc-timeout` wins), in milliseconds. Follow streams are bounded by
    /// their own heartbeats, not by this.
    pub request_timeout_ms: u64,
    /// Calls one connection may have in progress at once (until their response
    /// headers); more wait their turn, inside the node, among the connection's open
    /// streams.
    pub max_concurrent_per_connection: usize,
    /// Streams one connection may have open at once (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`, open follow streams included): the client
    /// holds back more until one ends, so no connection can make the node queue more
    /// than this many calls, however fast its client sends them.
    pub max_streams_per_connection: u32,
    /// Calls one caller (a facility, the national center) may have in flight at once,
    /// over all its connections to this process; one more is refused
    /// RESOURCE_EXHAUSTED.
    pub max_concurrent_per_caller: usize,
    /// Follow streams one facility may have open at once; more are refused
    /// RESOURCE_EXHAUSTED.
    pub max_follow_streams_per_caller: u32,
    /// Consent events (grants, revocations, statements) of one patient a read may load
    /// and fold; a read of a patient with more is refused RESOURCE_EXHAUSTED, never
    /// decided on a part of the history.
    pub max_consent_events_per_patient: usize,
    /// Break-glass windows of one patient a read may load; likewise.
    pub max_break_glass_windows_per_patient: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("hrx-data"),
            grpc_addr: "127.0.0.1:7443".parse().expect("valid address"),
            metrics_addr: "127.0.0.1:9464".parse().expect("valid address"),
            heartbeat_ms: 10_000,
            projector_batch: 500,
            backend: Backend::Embedded,
            roles: "ingest,projector,timeline,consent,registry,monitor".into(),
            kafka_brokers: None,
            kafka_partitions: 12,
            kafka_topic_prefix: String::new(),
            consumer_group: "hrx-projector".into(),
            kafka_ca_file: None,
            kafka_cert_file: None,
            kafka_key_file: None,
            kafka_properties: Default::default(),
            database_url: None,
            database_pool_size: 16,
            root_public_key: None,
            tls_dir: None,
            patient_addr: "127.0.0.1:7444".parse().expect("valid address"),
            attested_grant_max_days: 90,
            standing_window_days: 365,
            break_glass_per_day: 20,
            break_glass_open_per_patient: 1,
            recorded_at_max_future_secs: 5 * 60,
            recorded_at_max_past_secs: 7 * 24 * 60 * 60,
            projector_instance: None,
            kafka_session_timeout_ms: 6000,
            max_message_bytes: 16 * 1024 * 1024,
            max_envelope_bytes: 640 * 1024,
            request_timeout_ms: 30_000,
            max_concurrent_per_connection: 64,
            max_streams_per_connection: 200,
            max_concurrent_per_caller: 128,
            max_follow_streams_per_caller: 16,
            max_consent_events_per_patient: 10_000,
            max_break_glass_windows_per_patient: 1_000,
        }
    }
}

/// Whether `key` is one of [`ENV_VARS`] (ASCII case-insensitive). Other `HRX_*`
/// variables (test harnesses set some) are not configuration.
fn is_config_var(key: &str) -> bool {
    ENV_VARS.iter().any(|v| v.eq_ignore_ascii_case(key))
}

/// The `HRX_*` variables of [`ENV_VARS`] as a figment provider: what figment's `Env`
/// provider does (each value read as a TOML-like value, else a string; errors name the
/// variable), except that a value figment's value parser cannot take without panicking
/// is a plain string. figment 0.10.19 slices a quoted value at a character index as if
/// it were a byte index, so `"é\n"` panics (found by the `config` fuzz target;
/// `tests/fuzz/regressions/config/`).
struct EnvVars {
    dict: Dict,
}

impl EnvVars {
    fn new<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let dict = vars
            .into_iter()
            .filter(|(key, _)| is_config_var(key))
            .map(|(key, value)| (key[4..].to_ascii_lowercase(), env_value(value)))
            .collect();
        Self { dict }
    }
}

/// Deepest nesting of arrays and tables figment's value parser is given. It recurses
/// once per level, so `[[[[…` a few thousand deep overflows the stack (found by the
/// `config` fuzz target); no configuration key is an array or a table at all.
const MAX_ENV_NESTING: usize = 32;

/// One variable's value, as figment's `Env` reads it where its parser is sound.
fn env_value(raw: &str) -> Value {
    // The parser unescapes only inside quotes, and mis-indexes only when a multi-byte
    // character precedes a backslash there.
    let misindexed = raw.contains('\\') && !raw.is_ascii();
    if misindexed || nesting(raw) > MAX_ENV_NESTING {
        return Value::from(raw.to_owned());
    }
    raw.parse().unwrap_or_else(|_| Value::from(raw.to_owned()))
}

/// The deepest run of unclosed `[` and `{` in `raw` (quotes not considered: an
/// overestimate, which only makes a value a plain string sooner).
fn nesting(raw: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in raw.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("`HRX_` environment variable(s)").interpolater(|_, keys| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("HRX_{}", keys.join("_"))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

impl NodeConfig {
    /// Defaults ← `file` (if given) ← `HRX_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut f = Figment::from(Serialized::defaults(NodeConfig::default()));
        if let Some(file) = file {
            f = f.merge(Toml::file_exact(file));
        }
        let mut vars = Vec::new();
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str().filter(|k| is_config_var(k)).map(str::to_owned) else {
                continue;
            };
            let value = value
                .into_string()
                .map_err(|_| Box::new(figment::Error::from(format!("{key} is not valid UTF-8"))))?;
            vars.push((key, value));
        }
        f.merge(EnvVars::new(
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))
        .extract()
        .map_err(Box::new)
    }

    /// The roles, parsed.
    pub fn role_list(&self) -> Result<Vec<Role>, String> {
        Role::parse_list(&self.roles)
    }

    /// The consent policy ingest and the projector judge facility consent events by
    /// (every process of one exchange must run with the same).
    pub fn consent_policy(&self) -> Result<ConsentPolicy, String> {
        let days = |n: u32, what: &str| {
            hrx_domain::Duration::from_secs(i64::from(n) * 24 * 60 * 60)
                .map_err(|_| format!("{what} is out of range"))
        };
        if self.attested_grant_max_days == 0 {
            return Err("attested_grant_max_days must be at least 1".into());
        }
        Ok(ConsentPolicy {
            attested_max: days(self.attested_grant_max_days, "attested_grant_max_days")?,
            standing_window: days(self.standing_window_days, "standing_window_days")?,
            break_glass_per_day: self.break_glass_per_day,
            break_glass_open_per_patient: self.break_glass_open_per_patient,
            ..ConsentPolicy::default()
        })
    }

    /// TLS to the brokers, if configured: the CA file and the client certificate and
    /// key (which go together).
    pub fn kafka_tls_files(&self) -> Result<Option<KafkaTlsFiles>, String> {
        let identity = match (&self.kafka_cert_file, &self.kafka_key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err("kafka_cert_file and kafka_key_file go together".into()),
        };
        if self.kafka_ca_file.is_none() && identity.is_none() {
            return Ok(None);
        }
        Ok(Some(KafkaTlsFiles {
            ca_file: self.kafka_ca_file.clone(),
            client_identity: identity,
        }))
    }

    /// Every check a process makes of its configuration before it starts, in one
    /// place (what `Node::build` refuses to start with).
    pub fn validate(&self) -> Result<(), String> {
        self.role_list()?;
        self.consent_policy()?;
        self.kafka_tls_files()?;
        self.clock_policy();
        Ok(())
    }

    /// The configuration from a TOML document's text and `HRX_*` variables given as
    /// pairs, merged exactly as [`Self::load`] merges the file and the environment
    /// (what the configuration fuzz target drives, with no file and no process
    /// environment).
    pub fn from_sources<'a>(
        toml: &str,
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Box<figment::Error>> {
        Figment::from(Serialized::defaults(NodeConfig::default()))
            .merge(Toml::string(toml))
            .merge(EnvVars::new(env))
            .extract()
            .map_err(Box::new)
    }

    /// The bounds of a facility's recorded_at around the exchange's receive time
    /// (every ingest and projector process must run with the same).
    pub fn clock_policy(&self) -> ClockPolicy {
        let secs = |n: u32| hrx_domain::Duration::from_secs(i64::from(n)).expect("u32 seconds");
        ClockPolicy {
            max_future: secs(self.recorded_at_max_future_secs),
            max_past: secs(self.recorded_at_max_past_secs),
        }
    }

    /// A configuration for tests and `hrx demo`: everything on loopback port 0.
    pub fn ephemeral(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_owned(),
            grpc_addr: "127.0.0.1:0".parse().expect("valid address"),
            metrics_addr: "127.0.0.1:0".parse().expect("valid address"),
            patient_addr: "127.0.0.1:0".parse().expect("valid address"),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_vars_name_every_key() {
        let keys = serde_json_keys();
        assert_eq!(keys.len(), ENV_VARS.len());
        for k in keys {
            assert!(
                ENV_VARS.contains(&format!("HRX_{}", k.to_uppercase()).as_str()),
                "{k}"
            );
        }
    }

    fn serde_json_keys() -> Vec<String> {
        let v = figment::Figment::from(Serialized::defaults(NodeConfig::default()))
            .extract::<figment::value::Dict>()
            .unwrap();
        v.keys().cloned().collect()
    }

    #[test]
    fn sources_merge_like_load_the_environment_last() {
        let c = NodeConfig::from_sources(
            "roles = \"timeline\"\nmax_message_bytes = 2048\nheartbeat_ms = 7\n",
            [
                ("HRX_ROLES", "ingest,projector"),
                ("hrx_max_message_bytes", "1024"),
                ("HRX_NOT_CONFIGURATION", "x"),
                ("OTHER", "y"),
            ],
        )
        .unwrap();
        assert_eq!(c.roles, "ingest,projector");
        assert_eq!(c.max_message_bytes, 1024);
        assert_eq!(c.heartbeat_ms, 7);
        assert!(c.validate().is_ok());
        assert!(NodeConfig::from_sources("max_message_bytes = \"many\"", []).is_err());
        let bad = NodeConfig::from_sources("", [("HRX_ROLES", "bogus")]).unwrap();
        assert!(bad.validate().is_err());
    }

    /// The `config` fuzz target's crash: figment's value parser panics on a quoted
    /// value with a backslash after a multi-byte character. Such a value is a string;
    /// the others still parse as figment's `Env` parses them; an error names the
    /// variable.
    #[test]
    fn env_values_never_panic_and_errors_name_the_variable() {
        let c = NodeConfig::from_sources(
            "",
            [
                ("HRX_KAFKA_TOPIC_PREFIX", "\"é\\n\""),
                ("HRX_ROLES", "\"ingest\""),
                ("HRX_HEARTBEAT_MS", "250"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka_topic_prefix, "\"é\\n\"");
        assert_eq!(c.roles, "ingest");
        assert_eq!(c.heartbeat_ms, 250);
        let e = NodeConfig::from_sources("", [("HRX_HEARTBEAT_MS", "soon")]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("HRX_HEARTBEAT_MS"), "{text}");
        // Nesting deep enough to overflow figment's recursive parser: a string, and an
        // error for a key that wants a number; an IPv6 address is still an address.
        let deep = "[".repeat(4000);
        let c = NodeConfig::from_sources("", [("HRX_ROLES", deep.as_str())]).unwrap();
        assert_eq!(c.roles, deep);
        assert!(NodeConfig::from_sources("", [("HRX_HEARTBEAT_MS", deep.as_str())]).is_err());
        let c = NodeConfig::from_sources("", [("HRX_GRPC_ADDR", "[::1]:50051")]).unwrap();
        assert_eq!(c.grpc_addr, "[::1]:50051".parse().unwrap());
        // The fuzz target's inputs, whole: no panic, no overflow.
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fuzz/regressions/config"
        );
        for file in std::fs::read_dir(dir).unwrap() {
            let input = std::fs::read(file.unwrap().path()).unwrap();
            let text = std::str::from_utf8(&input).unwrap();
            let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
            let _ = NodeConfig::from_sources(toml, env.lines().filter_map(|l| l.split_once('=')));
        }
    }

    #[test]
    fn roles_parse() {
        assert_eq!(
            Role::parse_list("projector, ingest,ingest").unwrap(),
            vec![Role::Ingest, Role::Projector]
        );
        assert!(Role::parse_list("ingest,bogus").is_err());
        assert!(Role::parse_list("").is_err());
    }
}
