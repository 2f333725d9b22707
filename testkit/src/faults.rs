//! Faults to inject in tests, on loopback only: a Kafka broker of the test's own that can be
//! stopped and started again, and a TCP proxy in front of Postgres that can be cut.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// `N` distinct free loopback addresses (each held until all are chosen, so they differ).
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("bound address"))
}

/// Where `./dev` put the Kafka jars: `SURGE_KAFKA_LIBS`, else its default cache location.
fn kafka_libs() -> String {
    if let Ok(libs) = std::env::var("SURGE_KAFKA_LIBS") {
        return libs;
    }
    let pom = include_str!("../../deploy/kafka/pom.xml");
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .expect("deploy/kafka/pom.xml names kafka.version");
    let cache = std::env::var("SURGE_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/surge", std::env::var("HOME").unwrap_or_default()));
    format!("{cache}/kafka/libs-{version}")
}

/// A real single-node Kafka broker (KRaft) for one test, from the jars `./dev` assembled
/// (`SURGE_KAFKA_LIBS`), with its data in a directory of its own so it survives a restart.
pub struct PrivateBroker {
    pub brokers: String,
    dir: PathBuf,
    props: PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateBroker {
    pub async fn start() -> PrivateBroker {
        let [port, controller] = free_addrs().map(|a: SocketAddr| a.port());
        let dir = std::env::temp_dir().join(format!("surge-broker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("data")).expect("broker dir");
        let template = include_str!("../../deploy/kafka/server.properties");
        let props_text = template
            .replace("9092", &port.to_string())
            .replace("9093", &controller.to_string())
            + &format!("log.dirs={}\n", dir.join("data").display());
        let props = dir.join("server.properties");
        std::fs::write(&props, props_text).expect("broker properties");
        let mut broker = PrivateBroker {
            brokers: format!("127.0.0.1:{port}"),
            dir,
            props,
            child: None,
        };
        broker.format();
        broker.resume().await;
        broker
    }

    /// Formats the (empty) data directory for a new cluster with an id of its own.
    fn format(&self) {
        let cp = format!("{}/*", kafka_libs());
        let id = std::process::Command::new("java")
            .args(["-cp", &cp, "kafka.tools.StorageTool", "random-uuid"])
            .output()
            .expect("java runs");
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let formatted = std::process::Command::new("java")
            .args(["-cp", &cp, "kafka.tools.StorageTool", "format", "-t", &id, "-c"])
            .arg(&self.props)
            .arg("--standalone")
            .output()
            .expect("storage tool runs");
        assert!(
            formatted.status.success(),
            "format: {}",
            String::from_utf8_lossy(&formatted.stderr)
        );
    }

    /// Starts the broker process (again) and waits until it answers metadata requests.
    pub async fn resume(&mut self) {
        let libs = kafka_libs();
        let log = std::fs::File::create(self.dir.join("broker.log")).expect("broker log");
        let child = std::process::Command::new("java")
            .args(["-Xms128m", "-Xmx384m", "-cp", &format!("{libs}/*"), "kafka.Kafka"])
            .arg(&self.props)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("broker starts");
        self.child = Some(child);
        let config = surge_runtime::KafkaConfig::new(self.brokers.clone(), "");
        for _ in 0..120 {
            let c = config.clone();
            let ok =
                tokio::task::spawn_blocking(move || surge_runtime::kafka::check_broker(&c, Duration::from_secs(1)))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false);
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "private broker did not start; see {}",
            self.dir.join("broker.log").display()
        );
    }

    /// Replaces the broker's data as an operator who deleted its data directory would: killed,
    /// emptied, formatted with a new cluster id, started again. Topics, messages and consumer
    /// group offsets are gone; the address stays.
    pub async fn replace_data(&mut self) {
        self.stop();
        let data = self.dir.join("data");
        std::fs::remove_dir_all(&data).expect("broker data removed");
        std::fs::create_dir_all(&data).expect("broker data dir");
        self.format();
        self.resume().await;
    }

    /// Kills the broker (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy on loopback: forwards to `target` until cut, then drops every connection and
/// refuses new ones until restored. Put it between a service and Postgres to make Postgres
/// "unreachable" without stopping the server other tests use.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        TcpProxy::bind(any_port, target).await.expect("proxy binds")
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// What [`CommitCutProxy`] does to the next `COMMIT` it sees, once armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitCut {
    /// Drops the connection instead of forwarding the `COMMIT`: Postgres rolls back.
    BeforeCommit,
    /// Forwards the `COMMIT`, waits for Postgres's reply (it has committed then) and drops the
    /// connection without passing the reply on: the client cannot tell whether it committed.
    AfterReply,
    /// As `AfterReply`, and refuses every new connection from then on, until restored: the
    /// client cannot find out either.
    AfterReplyAndRefuse,
}

/// A TCP proxy in front of Postgres that reads what clients send and, once armed, cuts the
/// connection around the next `COMMIT` (sqlx sends `tx.commit()` as a simple query: a `Q`
/// message with `COMMIT`). Every other connection and message passes unchanged. It answers
/// clients' TLS requests with "no", so it can read the plain protocol.
pub struct CommitCutProxy {
    pub addr: SocketAddr,
    state: Arc<CommitCutState>,
}

struct CommitCutState {
    armed: std::sync::Mutex<Option<CommitCut>>,
    refusing: AtomicBool,
    /// Set once an armed cut happened.
    fired: AtomicBool,
}

impl CommitCutProxy {
    pub async fn start(target: SocketAddr) -> CommitCutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let state = Arc::new(CommitCutState {
            armed: std::sync::Mutex::new(None),
            refusing: AtomicBool::new(false),
            fired: AtomicBool::new(false),
        });
        let accepting = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accepting.refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let state = accepting.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = commit_cut_relay(client, server, state).await;
                    }
                });
            }
        });
        CommitCutProxy { addr, state }
    }

    /// The next `COMMIT` any client sends through the proxy is cut as `cut` says (once).
    pub fn arm(&self, cut: CommitCut) {
        self.state.fired.store(false, Ordering::SeqCst);
        *self.state.armed.lock().expect("commit cut lock") = Some(cut);
    }

    /// Whether the armed cut happened.
    pub fn fired(&self) -> bool {
        self.state.fired.load(Ordering::SeqCst)
    }

    /// Accepts new connections again after [`CommitCut::AfterReplyAndRefuse`].
    pub fn restore(&self) {
        self.state.refusing.store(false, Ordering::SeqCst);
    }
}

/// Relays one connection, message by message from the client, byte by byte from the server.
async fn commit_cut_relay(
    mut client: TcpStream,
    mut server: TcpStream,
    state: Arc<CommitCutState>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SSL_REQUEST: u32 = 80877103;
    const GSSENC_REQUEST: u32 = 80877104;
    // Startup: untyped messages (length, then body). Encryption requests are refused here.
    loop {
        let len = client.read_u32().await?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        client.read_exact(&mut body).await?;
        let code = body
            .get(..4)
            .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            client.write_all(b"N").await?;
            continue;
        }
        server.write_u32(len).await?;
        server.write_all(&body).await?;
        break;
    }
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    // Server to client; once `swallow` is set, what the server says is not passed on but
    // reported on `replied`.
    let swallow = Arc::new(AtomicBool::new(false));
    let (replied, mut reply_seen) = watch::channel(false);
    let swallowing = swallow.clone();
    let downstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = server_rx.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if swallowing.load(Ordering::SeqCst) {
                let _ = replied.send(true);
                continue;
            }
            client_tx.write_all(&buf[..n]).await?;
        }
    });
    let upstream = async {
        loop {
            let tag = client_rx.read_u8().await?;
            let len = client_rx.read_u32().await?;
            let mut body = vec![0; (len as usize).saturating_sub(4)];
            client_rx.read_exact(&mut body).await?;
            let is_commit = tag == b'Q'
                && String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .trim()
                    .trim_end_matches(';')
                    .eq_ignore_ascii_case("COMMIT");
            let cut = if is_commit {
                state.armed.lock().expect("commit cut lock").take()
            } else {
                None
            };
            match cut {
                None => {
                    server_tx.write_u8(tag).await?;
                    server_tx.write_u32(len).await?;
                    server_tx.write_all(&body).await?;
                }
                Some(CommitCut::BeforeCommit) => {
                    state.fired.store(true, Ordering::SeqCst);
                    return Ok(());
                }
                Some(cut) => {
                    if cut == CommitCut::AfterReplyAndRefuse {
                        state.refusing.store(true, Ordering::SeqCst);
                    }
                    // Everything before the COMMIT was answered (sqlx waits for ReadyForQuery
                    // before it sends COMMIT), so whatever the server says now is its reply.
                    swallow.store(true, Ordering::SeqCst);
                    server_tx.write_u8(tag).await?;
                    server_tx.write_u32(len).await?;
                    server_tx.write_all(&body).await?;
                    let _ = tokio::time::timeout(Duration::from_secs(10), reply_seen.wait_for(|seen| *seen)).await;
                    state.fired.store(true, Ordering::SeqCst);
                    return Ok(());
                }
            }
        }
    };
    let result: std::io::Result<()> = upstream.await;
    // Both directions are dropped here: the client sees its connection close.
    downstream.abort();
    result
}

impl TcpProxy {
    /// As [`TcpProxy::start`], listening on `listen` (a port a script can name in a service's
    /// database URL): `fault-proxy` (`src/bin/fault-proxy.rs`) runs one for `./dev chaos`.
    pub async fn bind(listen: SocketAddr, target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Ok(TcpProxy { addr, up, generation })
    }
}
