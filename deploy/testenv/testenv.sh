#!/usr/bin/env bash
# Throwaway test environment: a single-node Apache Kafka 4.x (KRaft, broker+controller,
# run from Maven Central jars) and a throwaway PostgreSQL cluster, both on loopback only,
# both over TLS only: a private CA made by `up` in DIR/tls signs the servers' and the
# clients' certificates; Kafka authenticates clients by certificate and authorizes
# them by ACL (see tls_init and kafka_acls for the identities and what each may do).
#
#   testenv.sh install                 PostgreSQL and kcat from apt if missing; Kafka jars into .cache/kafka;
#                                      grpcurl (Go module proxy) into .cache/tools/bin
#   testenv.sh up DIR                  start both (fresh data under DIR), write DIR/env
#   testenv.sh down DIR                stop both
#   testenv.sh restart-kafka DIR       stop + start Kafka, same port, same data
#   testenv.sh restart-postgres DIR    stop + start PostgreSQL, same port, same data
#   testenv.sh status DIR              show what runs (exit 0 only if both answer)
#   testenv.sh kafka-class CLASS ARGS  run a Kafka main class (tools) on the cached classpath
#
# Environment knobs: TESTENV_TIMEOUT (seconds, default 120), KAFKA_HEAP_OPTS,
# KAFKA_JVM_OPTS (extra broker JVM options).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE="$REPO/.cache/kafka"
LIBS="$CACHE/libs"
STAMP="$CACHE/stamp"
TIMEOUT=${TESTENV_TIMEOUT:-120}
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}
# Short-lived CLI JVMs: start fast, little JIT work.
TOOL_JVM_OPTS=(-Xms32m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto)

log() { printf 'testenv: %s\n' "$*" >&2; }
die() { printf 'testenv: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    [[ -n "$d" && -x "$d/initdb" ]] || die "PostgreSQL not installed; run: $0 install"
    printf '%s\n' "$d"
}

pom_hash() { sha256sum "$HERE/pom.xml" | cut -d' ' -f1; }

require_libs() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(pom_hash)" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null \
        || die "Kafka jars missing or stale in $LIBS; run: $0 install"
}

# log4j2 config for CLI tools: warnings only, to stderr.
tools_log4j() {
    [[ -f "$CACHE/log4j2-tools.properties" ]] && return 0
    cat >"$CACHE/log4j2-tools.properties.tmp" <<'EOF'
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = STDERR
EOF
    mv "$CACHE/log4j2-tools.properties.tmp" "$CACHE/log4j2-tools.properties"
}

kafka_class() { # CLASS ARGS... : run a Kafka tool class in the foreground
    require_libs
    tools_log4j
    java "${TOOL_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$CACHE/log4j2-tools.properties" \
        -cp "$LIBS/*" "$@"
}

free_ports() { # N -> N distinct free loopback ports, one per line
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()
EOF
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Alive and not a zombie (an unreaped child still answers kill -0).
pid_alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    local st
    st=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$st" != Z && "$st" != X ]]
}

# Is PID our Kafka broker for this DIR? (guards against a recycled pid)
is_our_kafka() {
    pid_alive "${1:-}" || return 1
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$KDIR/server.properties"
}

tail_log() { # FILE
    if [[ -f "$1" ]]; then
        printf -- '----- last 40 lines of %s -----\n' "$1" >&2
        tail -n 40 "$1" >&2 || true
        printf -- '-----\n' >&2
    else
        printf 'testenv: (no log at %s)\n' "$1" >&2
    fi
}

set_dir() { # DIR [create]: set paths and load state if present
    [[ -n "${1:-}" ]] || die "missing DIR argument"
    if [[ "${2:-}" == create ]]; then mkdir -p "$1"; fi
    [[ -d "$1" ]] || die "no such directory: $1"
    DIR=$(cd "$1" && pwd)
    KDIR="$DIR/kafka"
    TLS="$DIR/tls"
    PGROOT="$DIR/pg"
    STATE="$DIR/state"
    KAFKA_PORT="" KAFKA_CTRL_PORT="" PG_PORT="" PG_SOCKDIR="" KAFKA_PID=""
    # state may move PGROOT to /tmp (when user postgres cannot reach DIR)
    if [[ -f "$STATE" ]]; then
        # shellcheck disable=SC1090
        . "$STATE"
    fi
    if [[ -f "$KDIR/pid" ]]; then KAFKA_PID=$(cat "$KDIR/pid"); fi
}

write_state() {
    cat >"$STATE.tmp" <<EOF
KAFKA_PORT=$KAFKA_PORT
KAFKA_CTRL_PORT=$KAFKA_CTRL_PORT
PG_PORT=$PG_PORT
PG_SOCKDIR=$PG_SOCKDIR
PGROOT=$PGROOT
EOF
    mv "$STATE.tmp" "$STATE"
}

pg_pid() { # pid of the postmaster of our data dir, empty if not running
    local f="$PGROOT/data/postmaster.pid" p
    [[ -f "$f" ]] || return 0
    p=$(head -1 "$f")
    if pid_alive "$p"; then printf '%s\n' "$p"; fi
}

# The database URL, libpq style (psql and hrx both take it): TLS, server verified
# against the testenv CA. The CA path is percent-encoded for the URL.
pg_url() {
    local ca
    ca=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe="/"))' "$TLS/ca.pem")
    printf 'postgres://postgres@127.0.0.1:%s/postgres?sslmode=verify-full&sslrootcert=%s\n' "$PG_PORT" "$ca"
}

write_env() {
    local kpid="" ppid=""
    if is_our_kafka "$KAFKA_PID"; then kpid=$KAFKA_PID; fi
    ppid=$(pg_pid)
    # HRX_KAFKA_CA_FILE/CERT_FILE/KEY_FILE: the `hrx` identity, as node configuration
    # takes it. HRX_TESTENV_TLS_DIR: every identity (NAME.pem, NAME.key), e.g. for
    # tests of the ACLs.
    cat >"$DIR/env.tmp" <<EOF
export HRX_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export HRX_KAFKA_CA_FILE=$TLS/ca.pem
export HRX_KAFKA_CERT_FILE=$TLS/hrx.pem
export HRX_KAFKA_KEY_FILE=$TLS/hrx.key
export HRX_DATABASE_URL='$(pg_url)'
export HRX_TESTENV_DIR=$DIR
export HRX_TESTENV_TLS_DIR=$TLS
export HRX_KAFKA_PID=$kpid
export HRX_POSTGRES_PID=$ppid
EOF
    mv "$DIR/env.tmp" "$DIR/env"
}

as_pg() { runuser -u postgres -- "$@"; }

# ---------------------------------------------------------------- install

cmd_install() {
    local t0=$SECONDS
    local packages=()
    if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || [[ -n "${TESTENV_FORCE_PG_INSTALL:-}" ]]; then
        packages+=(postgresql)
    fi
    # kcat: the crash reconciliation counts Kafka's messages with a tool that is not hrx.
    command -v kcat >/dev/null || packages+=(kcat)
    if ((${#packages[@]})); then
        log "installing ${packages[*]} from apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
    fi
    command -v kcat >/dev/null || die "kcat install failed"
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || die "PostgreSQL install failed (no initdb)"

    command -v java >/dev/null || die "java not found"
    local want; want=$(pom_hash)
    if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
        log "Kafka jars cached in $LIBS"
    else
        command -v mvn >/dev/null || die "mvn not found"
        log "copying Kafka runtime jars into $LIBS"
        rm -rf "$LIBS" "$LIBS.tmp" "$STAMP"
        mkdir -p "$CACHE"
        (cd "$HERE" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime \
            -DoutputDirectory="$LIBS.tmp") >"$CACHE/mvn.log" 2>&1 ||
            { tail_log "$CACHE/mvn.log"; die "mvn dependency:copy-dependencies failed"; }
        rm -rf "$HERE/target"   # maven may leave an empty target/ next to the pom
        compgen -G "$LIBS.tmp/kafka_2.13-*.jar" >/dev/null || die "no kafka_2.13 jar was copied"
        mv "$LIBS.tmp" "$LIBS"
        printf '%s\n' "$want" >"$STAMP"
    fi
    tools_log4j
    install_grpcurl
    log "install done in $((SECONDS - t0)) s ($(ls "$LIBS" | wc -l) jars)"
}

# grpcurl: the observability test lists and calls the services through gRPC server
# reflection with it. Built from the Go module proxy at a pinned version into
# .cache/tools/bin (the Go toolchain is on the machine; Debian has no grpcurl package).
GRPCURL_VERSION=v1.9.4
install_grpcurl() {
    local bin="$REPO/.cache/tools/bin/grpcurl"
    if [[ -x "$bin" && "$(cat "$bin.version" 2>/dev/null)" == "$GRPCURL_VERSION" ]]; then
        log "grpcurl $GRPCURL_VERSION cached"
        return
    fi
    local go; go=$(command -v go || echo /usr/local/go/bin/go)
    [[ -x "$go" ]] || die "go not found (needed to build grpcurl)"
    log "building grpcurl $GRPCURL_VERSION"
    GOBIN="$REPO/.cache/tools/bin" GOPATH="$REPO/.cache/go" GOMODCACHE="$REPO/.cache/go/mod" \
        GOFLAGS=-modcacherw "$go" install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION" \
        >"$REPO/.cache/tools-grpcurl.log" 2>&1 ||
        { tail_log "$REPO/.cache/tools-grpcurl.log"; die "grpcurl build failed"; }
    printf '%s\n' "$GRPCURL_VERSION" >"$bin.version"
}

# ---------------------------------------------------------------- tls

# Password of the Java PKCS12 key stores (Java insists on one). Test-only: the stores
# hold throwaway keys of a CA that lives as long as DIR.
STORE_PASS=testenv-changeit

# Kafka client identities: file stem = certificate CN = Kafka principal (User:CN, through
# ssl.principal.mapping.rules). The ACLs of each are made in kafka_acls.
#   hrx           what every hrx test and process uses: everything on topics, groups, cluster
#   hrx-ingest    Write+Describe on the facility-events topics, IdempotentWrite on the cluster
#   hrx-reader    Read+Describe on topics, Read on groups; no Write
#   kafka-admin   super user: testenv's own tools (readiness check, ACL creation)
# kafka-broker is the broker's own identity (also a super user).
KAFKA_CLIENTS=(hrx hrx-ingest hrx-reader kafka-admin)
# What hrx-ingest may write: Kafka ACLs match by literal name or by prefix only, so this
# is a prefix. It covers the production name (hrx.facility-events.v1) and the topics the
# ACL test makes under it; the other tests' prefixed topics (t<id>.hrx.…) are not.
INGEST_TOPIC_PREFIX=hrx.facility-events.

tls_sign() { # NAME CN EXT...: key NAME.key (PKCS#8 PEM) and NAME.pem signed by the CA
    local name=$1 cn=$2; shift 2
    # EC P-256 keys as unencrypted PKCS#8 PEM ("BEGIN PRIVATE KEY"): the one form that
    # OpenSSL/librdkafka, rustls, PostgreSQL and Java all read.
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TLS/$name.key" 2>/dev/null
    openssl req -new -key "$TLS/$name.key" -subj "/O=hrx-testenv/CN=$cn" -out "$TLS/$name.csr"
    printf '%s\n' "$@" >"$TLS/$name.ext"
    openssl x509 -req -in "$TLS/$name.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" \
        -CAcreateserial -days 30 -sha256 -extfile "$TLS/$name.ext" -out "$TLS/$name.pem" 2>/dev/null
    rm -f "$TLS/$name.csr" "$TLS/$name.ext"
    chmod 600 "$TLS/$name.key"
}

tls_init() { # fresh CA and certificates in $TLS
    rm -rf "$TLS"
    mkdir -p "$TLS"
    chmod 700 "$TLS"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TLS/ca.key" 2>/dev/null
    chmod 600 "$TLS/ca.key"
    # rustls (webpki) wants a v3 CA with basicConstraints CA:TRUE and keyCertSign.
    openssl req -x509 -new -key "$TLS/ca.key" -subj "/O=hrx-testenv/CN=hrx-testenv CA" -days 30 -sha256 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" -out "$TLS/ca.pem"
    local san="subjectAltName=IP:127.0.0.1,DNS:localhost"
    local leaf=("basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment"
        "authorityKeyIdentifier=keyid")
    # The broker is a TLS client too: of its own controller listener.
    tls_sign kafka-broker kafka-broker "${leaf[@]}" "$san" "extendedKeyUsage=serverAuth,clientAuth"
    tls_sign postgres postgres "${leaf[@]}" "$san" "extendedKeyUsage=serverAuth"
    local c
    for c in "${KAFKA_CLIENTS[@]}"; do
        tls_sign "$c" "$c" "${leaf[@]}" "extendedKeyUsage=clientAuth"
    done
    rm -f "$TLS/ca.srl"
    # Java stores for the broker and for testenv's Java tools: key + chain in a PKCS12
    # key store, the CA alone in a PKCS12 trust store (keytool: a trusted-certificate
    # entry, which `openssl pkcs12` cannot write for Java).
    local who
    for who in kafka-broker kafka-admin; do
        openssl pkcs12 -export -name "$who" -inkey "$TLS/$who.key" -in "$TLS/$who.pem" \
            -certfile "$TLS/ca.pem" -passout "pass:$STORE_PASS" -out "$TLS/$who.p12"
    done
    keytool -importcert -noprompt -alias ca -file "$TLS/ca.pem" -storetype PKCS12 \
        -keystore "$TLS/truststore.p12" -storepass "$STORE_PASS" >/dev/null 2>&1 ||
        die "keytool could not write the trust store"
    # Client configuration of the Java tools (kafka-admin: may do anything).
    cat >"$TLS/kafka-admin.properties" <<EOF
security.protocol=SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS/kafka-admin.p12
ssl.keystore.password=$STORE_PASS
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS/truststore.p12
ssl.truststore.password=$STORE_PASS
EOF
}

# ---------------------------------------------------------------- kafka

kafka_init() { # fresh config + formatted storage in $KDIR
    rm -rf "$KDIR"
    mkdir -p "$KDIR/data"
    cat >"$KDIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CTRL_PORT
# TLS only, clients must present a certificate. The controller listener is TLS too: with
# an authorizer, a PLAINTEXT controller listener would need User:ANONYMOUS as a super
# user (the broker registers through it), i.e. anyone on that port could do anything.
listeners=SSL://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT
advertised.listeners=SSL://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=SSL
listener.security.protocol.map=CONTROLLER:SSL,SSL:SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS/kafka-broker.p12
ssl.keystore.password=$STORE_PASS
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS/truststore.p12
ssl.truststore.password=$STORE_PASS
ssl.client.auth=required
# Principal = the certificate's CN (User:hrx, …) for certificates of this CA's subjects;
# any other subject keeps its full DN, which no ACL names.
ssl.principal.mapping.rules=RULE:^CN=([^,]+),O=hrx-testenv$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:kafka-broker;User:kafka-admin
log.dirs=$KDIR/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=12
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
    cat >"$KDIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
    local cid
    cid=$(python3 -c 'import base64,uuid
while True:
    s=base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"): print(s); break')
    kafka_class kafka.tools.StorageTool format -t "$cid" -c "$KDIR/server.properties" --standalone \
        >"$KDIR/format.log" 2>&1 || { tail_log "$KDIR/format.log"; die "kafka storage format failed"; }
}

kafka_start() {
    require_libs
    tools_log4j
    if is_our_kafka "$KAFKA_PID"; then die "Kafka already running (pid $KAFKA_PID)"; fi
    rm -f "$KDIR/pid"
    # setsid: own session, so the broker does not get the caller's terminal signals.
    # exec inside bash -c: the recorded pid is the JVM's own.
    # shellcheck disable=SC2086
    setsid bash -c 'echo $$ >"$1/pid"; shift; exec "$@"' _ "$KDIR" \
        java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        ${KAFKA_JVM_OPTS:-} \
        -Dlog4j2.configurationFile="$KDIR/log4j2.properties" \
        -cp "$LIBS/*" kafka.Kafka "$KDIR/server.properties" \
        >>"$KDIR/server.log" 2>&1 </dev/null &
    for _ in $(seq 1 50); do [[ -s "$KDIR/pid" ]] && break; sleep 0.1; done
    KAFKA_PID=$(cat "$KDIR/pid" 2>/dev/null || true)
    [[ -n "$KAFKA_PID" ]] || die "Kafka did not start"
}

kafka_wait() {
    local deadline=$((SECONDS + TIMEOUT)) out
    while :; do
        if ! is_our_kafka "$KAFKA_PID"; then
            tail_log "$KDIR/server.log"
            die "Kafka (pid $KAFKA_PID) exited during startup"
        fi
        if port_open "$KAFKA_PORT"; then
            # A metadata request that lists our broker: it is registered and unfenced.
            if out=$(timeout 30 java "${TOOL_JVM_OPTS[@]}" \
                    -Dlog4j2.configurationFile="$CACHE/log4j2-tools.properties" -cp "$LIBS/*" \
                    org.apache.kafka.tools.BrokerApiVersionsCommand \
                    --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
                    --command-config "$TLS/kafka-admin.properties" 2>&1) \
                && grep -q "(id: 1 " <<<"$out"; then
                return 0
            fi
        fi
        if ((SECONDS >= deadline)); then
            tail_log "$KDIR/server.log"
            die "Kafka did not answer on 127.0.0.1:$KAFKA_PORT within ${TIMEOUT}s"
        fi
        sleep 1
    done
}

kafka_stop() {
    if ! is_our_kafka "$KAFKA_PID"; then rm -f "$KDIR/pid"; return 0; fi
    kill -TERM "$KAFKA_PID" 2>/dev/null || true
    for _ in $(seq 1 600); do   # up to 60 s for a clean shutdown
        pid_alive "$KAFKA_PID" || break
        sleep 0.1
    done
    if pid_alive "$KAFKA_PID"; then
        log "Kafka (pid $KAFKA_PID) did not stop in 60 s; killing"
        kill -KILL "$KAFKA_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do pid_alive "$KAFKA_PID" || break; sleep 0.1; done
    fi
    pid_alive "$KAFKA_PID" && die "could not stop Kafka (pid $KAFKA_PID)"
    rm -f "$KDIR/pid"
}

# The ACLs of the client identities (see KAFKA_CLIENTS). Made once by `up`: they live in
# the cluster's metadata log, so restarts keep them. kafka-admin (a super user) makes
# them, one AclCommand JVM per principal/resource-pattern group, started together (each
# is mostly JVM start-up).
kafka_acls() {
    local acl=(org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT"
        --command-config "$TLS/kafka-admin.properties" --add)
    local pids=() i=0 failed=0 pid
    run_acl() { kafka_class "${acl[@]}" "$@" >"$KDIR/acls.$i.log" 2>&1 & pids+=($!); i=$((i + 1)); }
    run_acl --allow-principal User:hrx --operation All --topic '*' --group '*' --cluster
    run_acl --allow-principal User:hrx-ingest --operation Write --operation Describe \
        --resource-pattern-type prefixed --topic "$INGEST_TOPIC_PREFIX"
    run_acl --allow-principal User:hrx-ingest --operation IdempotentWrite --cluster
    run_acl --allow-principal User:hrx-reader --operation Read --operation Describe --topic '*'
    run_acl --allow-principal User:hrx-reader --operation Read --group '*'
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    cat "$KDIR"/acls.*.log >"$KDIR/acls.log" && rm -f "$KDIR"/acls.*.log
    if ((failed)); then tail_log "$KDIR/acls.log"; die "kafka-acls failed"; fi
}

# ---------------------------------------------------------------- postgres

pg_init() {
    local bin; bin=$(pg_bin)
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    PGROOT="$DIR/pg"
    rm -rf "$PGROOT"
    mkdir -p "$PGROOT"
    chown postgres: "$PGROOT"
    chmod 700 "$PGROOT"
    if ! as_pg test -w "$PGROOT"; then
        # A parent of DIR is not searchable by user postgres (e.g. under /root):
        # keep the cluster in /tmp and point DIR/pg at it.
        rmdir "$PGROOT"
        PGROOT=$(mktemp -d /tmp/testenv-pg.XXXXXX)
        chown postgres: "$PGROOT"
        chmod 700 "$PGROOT"
        ln -s "$PGROOT" "$DIR/pg"
        log "user postgres cannot reach $DIR; PostgreSQL data in $PGROOT (linked as $DIR/pg)"
    fi
    # Unix socket paths are limited to 107 bytes.
    PG_SOCKDIR="$PGROOT"
    if ((${#PG_SOCKDIR} > 80)); then
        PG_SOCKDIR=$(mktemp -d /tmp/testenv-pgsock.XXXXXX)
        chown postgres: "$PG_SOCKDIR"
    fi
    as_pg "$bin/initdb" -D "$PGROOT/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
        >"$PGROOT/initdb.log" 2>&1 || { tail_log "$PGROOT/initdb.log"; die "initdb failed"; }
    cat >>"$PGROOT/data/postgresql.conf" <<EOF

# --- testenv.sh ---
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCKDIR'
fsync = off
full_page_writes = off
max_connections = 200
logging_collector = off
# TLS with the testenv CA's server certificate (copied in: the data dir may be under
# /tmp when user postgres cannot reach DIR, and the key must belong to postgres, 0600).
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
EOF
    install -o postgres -g postgres -m 644 "$TLS/postgres.pem" "$PGROOT/data/server.crt"
    install -o postgres -g postgres -m 600 "$TLS/postgres.key" "$PGROOT/data/server.key"
    # TCP over TLS only: plaintext TCP is rejected. The Unix socket (in a directory only
    # postgres and root can enter) stays for pg_ctl and local maintenance.
    cat >"$PGROOT/data/pg_hba.conf" <<'EOF'
# TYPE    DATABASE  USER  ADDRESS       METHOD
local     all       all                 trust
hostssl   all       all   127.0.0.1/32  trust
hostssl   all       all   ::1/128       trust
host      all       all   0.0.0.0/0     reject
host      all       all   ::/0          reject
EOF
}

pg_start() {
    local bin; bin=$(pg_bin)
    [[ -n "$(pg_pid)" ]] && die "PostgreSQL already running (pid $(pg_pid))"
    if [[ -n "$PG_SOCKDIR" && ! -d "$PG_SOCKDIR" ]]; then   # /tmp socket dir may have been cleaned
        mkdir -p "$PG_SOCKDIR"; chown postgres: "$PG_SOCKDIR"
    fi
    as_pg "$bin/pg_ctl" -D "$PGROOT/data" -l "$PGROOT/server.log" -w -t "$TIMEOUT" start >/dev/null 2>&1 || {
        tail_log "$PGROOT/server.log"
        die "PostgreSQL did not start on 127.0.0.1:$PG_PORT"
    }
}

pg_wait() {
    local bin deadline=$((SECONDS + TIMEOUT)); bin=$(pg_bin)
    # Through the URL the tests get: TLS, server certificate and host name verified.
    until "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -t 5 &&
          "$bin/psql" -X -q -A -t "$(pg_url)" -c 'select 1' >/dev/null 2>&1; do
        if [[ -z "$(pg_pid)" ]]; then
            tail_log "$PGROOT/server.log"; die "PostgreSQL exited during startup"
        fi
        if ((SECONDS >= deadline)); then
            tail_log "$PGROOT/server.log"
            die "PostgreSQL did not answer on 127.0.0.1:$PG_PORT within ${TIMEOUT}s"
        fi
        sleep 0.5
    done
}

pg_stop() {
    [[ -d "$PGROOT/data" ]] || return 0
    [[ -n "$(pg_pid)" ]] || return 0
    local bin; bin=$(pg_bin)
    as_pg "$bin/pg_ctl" -D "$PGROOT/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
        as_pg "$bin/pg_ctl" -D "$PGROOT/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    [[ -z "$(pg_pid)" ]] || die "could not stop PostgreSQL (pid $(pg_pid))"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    set_dir "${1:-}" create
    local t0=$SECONDS
    if is_our_kafka "$KAFKA_PID" || [[ -n "$(pg_pid)" ]]; then
        die "servers of $DIR still run; run: $0 down $DIR"
    fi
    require_libs
    pg_bin >/dev/null
    rm -f "$DIR/env" "$STATE"
    if [[ -n "$PG_SOCKDIR" && "$PG_SOCKDIR" == /tmp/testenv-pgsock.* ]]; then rm -rf "$PG_SOCKDIR"; fi
    if [[ "$PGROOT" == /tmp/testenv-pg.* ]]; then rm -rf "$PGROOT"; fi   # from an earlier up
    local ports; mapfile -t ports < <(free_ports 3)
    ((${#ports[@]} == 3)) || die "could not pick free ports"
    KAFKA_PORT=${ports[0]} KAFKA_CTRL_PORT=${ports[1]} PG_PORT=${ports[2]} PG_SOCKDIR=""

    # On any failure below, stop whatever was started so nothing is left running.
    trap 'rc=$?; if ((rc != 0)); then log "up failed; stopping what was started"; kafka_stop || true; pg_stop || true; fi' EXIT
    tls_init                          # a fresh CA each time: DIR's old keys are not reused
    local t_tls=$((SECONDS - t0))
    kafka_init
    kafka_start                       # boots in the background while PostgreSQL starts
    pg_init
    write_state
    pg_start
    pg_wait
    kafka_wait
    local t_ready=$((SECONDS - t0))
    kafka_acls
    write_env
    trap - EXIT
    log "up in $((SECONDS - t0)) s (certificates ${t_tls} s, both servers ready at ${t_ready} s, then ACLs); env in $DIR/env"
    cat "$DIR/env"
}

cmd_down() {
    set_dir "${1:-}"
    kafka_stop
    pg_stop
    if [[ -n "$PG_SOCKDIR" && "$PG_SOCKDIR" == /tmp/testenv-pgsock.* ]]; then rm -rf "$PG_SOCKDIR"; fi
    [[ -f "$DIR/env" ]] && write_env
    log "down: $DIR"
}

cmd_restart_kafka() {
    set_dir "${1:-}"
    [[ -n "$KAFKA_PORT" && -f "$KDIR/server.properties" ]] || die "no Kafka set up in $DIR; run: $0 up $DIR"
    kafka_stop
    kafka_start
    kafka_wait
    write_env
    log "Kafka restarted (pid $KAFKA_PID) on 127.0.0.1:$KAFKA_PORT"
}

cmd_restart_postgres() {
    set_dir "${1:-}"
    [[ -n "$PG_PORT" && -d "$PGROOT/data" ]] || die "no PostgreSQL set up in $DIR; run: $0 up $DIR"
    pg_stop
    pg_start
    pg_wait
    write_env
    log "PostgreSQL restarted (pid $(pg_pid)) on 127.0.0.1:$PG_PORT"
}

cmd_status() {
    set_dir "${1:-}"
    local ok=0 ppid
    if is_our_kafka "$KAFKA_PID" && port_open "$KAFKA_PORT"; then
        echo "kafka:    running  pid $KAFKA_PID  127.0.0.1:$KAFKA_PORT (controller $KAFKA_CTRL_PORT)"
    else
        echo "kafka:    stopped${KAFKA_PORT:+  (port $KAFKA_PORT)}"; ok=3
    fi
    ppid=$(pg_pid)
    if [[ -n "$ppid" ]] && "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3; then
        echo "postgres: running  pid $ppid  127.0.0.1:$PG_PORT  data $PGROOT/data"
    else
        echo "postgres: stopped${PG_PORT:+  (port $PG_PORT)}"; ok=3
    fi
    [[ -f "$DIR/env" ]] && cat "$DIR/env"
    return $ok
}

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local cmd=${1:-}
    shift || true
    case "$cmd" in
        install) cmd_install ;;
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        restart-kafka) cmd_restart_kafka "$@" ;;
        restart-postgres) cmd_restart_postgres "$@" ;;
        status) cmd_status "$@" ;;
        kafka-class) [[ $# -ge 1 ]] || usage; kafka_class "$@" ;;
        *) usage ;;
    esac
}

main "$@"
