//! Faults to inject in tests, on loopback only: a Kafka broker of the test's own that can be
//! stopped and started again, and a TCP proxy in front of Postgres that can be cut.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
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
        let libs = kafka_libs();
        let (port, controller) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("surge-broker-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("data")).expect("broker dir");
        let template = include_str!("../../deploy/kafka/server.properties");
        let props_text = template
            .replace("9092", &port.to_string())
            .replace("9093", &controller.to_string())
            + &format!("log.dirs={}\n", dir.join("data").display());
        let props = dir.join("server.properties");
        std::fs::write(&props, props_text).expect("broker properties");
        let cp = format!("{libs}/*");
        let id = std::process::Command::new("java")
            .args(["-cp", &cp, "kafka.tools.StorageTool", "random-uuid"])
            .output()
            .expect("java runs");
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let formatted = std::process::Command::new("java")
            .args(["-cp", &cp, "kafka.tools.StorageTool", "format", "-t", &id, "-c"])
            .arg(&props)
            .arg("--standalone")
            .output()
            .expect("storage tool runs");
        assert!(
            formatted.status.success(),
            "format: {}",
            String::from_utf8_lossy(&formatted.stderr)
        );
        let mut broker = PrivateBroker {
            brokers: format!("127.0.0.1:{port}"),
            dir,
            props,
            child: None,
        };
        broker.resume().await;
        broker
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
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
        TcpProxy { addr, up, generation }
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
