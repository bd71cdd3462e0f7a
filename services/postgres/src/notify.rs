//! Cross-process change notification: LISTEN/NOTIFY on [`CHANNEL`].
//!
//! Every apply (and reset) runs `pg_notify(CHANNEL, <instance id> <buckets>)` inside
//! its transaction ([`payload`]: the buckets are those of the patients it touched,
//! [`hrx_ports::changed`]); PostgreSQL delivers it at commit to every session listening on the
//! channel, in every process. Each [`crate::PgStore`] keeps one dedicated connection
//! (outside the pool) that LISTENs, polls the connection with `poll_message`, and bumps
//! the store's `changes` watch on every notification from another store instance. The
//! instance's own notifications are skipped because `apply` already bumped the counter
//! right after its commit: counting them again would wake followers a second time, late
//! and for nothing.
//!
//! If the connection drops (server restart, network cut, idle kill), notifications sent
//! meanwhile are lost; so after reconnecting and LISTENing again the counter is bumped
//! once, with every bucket, and followers re-read. Reconnects back off from [`MIN_BACKOFF`] to
//! [`MAX_BACKOFF`]. A silent dead peer is found by a ping every [`PING_INTERVAL`].

use std::future::poll_fn;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hrx_identity::backend::PostgresTlsStream;
use hrx_ports::changed::{BucketSet, PatientChanges};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, Notification, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{PgError, describe};

/// The notification channel.
pub(crate) const CHANNEL: &str = "hrx_changes";

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A session that lasted this long was healthy: the next failure starts the backoff
/// afresh.
const HEALTHY: Duration = Duration::from_secs(30);
const PING_INTERVAL: Duration = Duration::from_secs(15);

/// The payload of a notification: the instance id, a space, and the touched buckets
/// as hex ([`BucketSet::to_hex`], 256 digits: far below NOTIFY's 8,000-byte limit).
pub(crate) fn payload(instance: &str, touched: &BucketSet) -> String {
    format!("{instance} {}", touched.to_hex())
}

/// The instance and buckets of a payload; every bucket when they cannot be read.
fn parse_payload(payload: &str) -> (&str, BucketSet) {
    match payload.split_once(' ') {
        Some((instance, hex)) => (
            instance,
            BucketSet::from_hex(hex).unwrap_or_else(BucketSet::all),
        ),
        None => (payload, BucketSet::all()),
    }
}

/// What the listener needs to (re)connect and to decide what to count.
pub(crate) struct Listener {
    pub(crate) config: Config,
    pub(crate) tls: MakeRustlsConnect,
    /// Bounds connecting, LISTEN and each ping.
    pub(crate) timeout: Duration,
    /// This store instance's id: the payload of its own notifications.
    pub(crate) instance: String,
    pub(crate) changes: Arc<watch::Sender<u64>>,
    pub(crate) patient_changes: Arc<PatientChanges>,
    /// For messages: `host:port/dbname`, never the password.
    pub(crate) target: String,
}

/// One listening session.
struct Session {
    client: Client,
    connection: Connection<Socket, PostgresTlsStream>,
}

impl Listener {
    /// Opens the first session (so that the store is listening before `connect`
    /// returns, and an unreachable server is reported there), then keeps listening in a
    /// task until the returned handle is aborted.
    pub(crate) async fn start(self) -> Result<JoinHandle<()>, PgError> {
        let first = self.open().await.map_err(|reason| PgError::Connect {
            target: self.target.clone(),
            reason: format!("the change listener: {reason}"),
        })?;
        Ok(tokio::spawn(self.run(first)))
    }

    /// Serves sessions forever, reconnecting with backoff.
    async fn run(self, first: Session) {
        let mut session = Some(first);
        let mut backoff = MIN_BACKOFF;
        loop {
            let current = match session.take() {
                Some(s) => s,
                None => match self.open().await {
                    Ok(s) => {
                        // Notifications sent while we were away are lost: wake everyone
                        // to re-read.
                        self.bump(&BucketSet::all());
                        tracing::info!(target_db = %self.target, "change listener reconnected");
                        s
                    }
                    Err(reason) => {
                        tracing::warn!(
                            target_db = %self.target,
                            %reason,
                            retry_in_ms = backoff.as_millis() as u64,
                            "change listener cannot reconnect"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let reason = self.serve(current).await;
            if started.elapsed() >= HEALTHY {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!(
                target_db = %self.target,
                %reason,
                retry_in_ms = backoff.as_millis() as u64,
                "change listener lost its connection"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn bump(&self, touched: &BucketSet) {
        self.patient_changes.bump(touched);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn on_notification(&self, n: &Notification) {
        if n.channel() != CHANNEL {
            return;
        }
        let (instance, touched) = parse_payload(n.payload());
        if instance != self.instance {
            self.bump(&touched);
        }
    }

    /// Connects and LISTENs, within the timeout.
    async fn open(&self) -> Result<Session, String> {
        let (client, mut connection) =
            match tokio::time::timeout(self.timeout, self.config.connect(self.tls.clone())).await {
                Err(_) => return Err(format!("no answer within {:?}", self.timeout)),
                Ok(Err(e)) => return Err(describe(&e)),
                Ok(Ok(pair)) => pair,
            };
        // The connection must be polled for LISTEN to complete.
        let listen = tokio::time::timeout(self.timeout, client.batch_execute("LISTEN hrx_changes"));
        tokio::select! {
            r = listen => match r {
                Err(_) => return Err(format!("LISTEN got no answer within {:?}", self.timeout)),
                Ok(Err(e)) => return Err(format!("LISTEN: {}", describe(&e))),
                Ok(Ok(())) => {}
            },
            r = self.drive(&mut connection) => return Err(r),
        }
        Ok(Session { client, connection })
    }

    /// Handles the session's messages until it ends; returns why it ended.
    async fn serve(&self, session: Session) -> String {
        let Session {
            client,
            mut connection,
        } = session;
        let pings = async {
            loop {
                tokio::time::sleep(PING_INTERVAL).await;
                match tokio::time::timeout(self.timeout, client.simple_query("SELECT 1")).await {
                    Err(_) => return format!("a ping got no answer within {:?}", self.timeout),
                    Ok(Err(e)) => return format!("ping: {}", describe(&e)),
                    Ok(Ok(_)) => {}
                }
            }
        };
        tokio::select! {
            r = self.drive(&mut connection) => r,
            r = pings => r,
        }
    }

    /// Polls the connection (which also carries the client's requests), handling
    /// notifications, until it ends; returns why.
    async fn drive(&self, connection: &mut Connection<Socket, PostgresTlsStream>) -> String {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => self.on_notification(&n),
                // Notices are the server's warnings: nothing to act on here.
                Some(Ok(_)) => {}
                Some(Err(e)) => return describe(&e),
                None => return "the server closed the connection".to_owned(),
            }
        }
    }
}
