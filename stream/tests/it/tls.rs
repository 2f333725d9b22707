//! TLS with a configured certificate: a client that trusts the certificate's authority reads;
//! one that speaks clear text to it gets nothing.

use crate::support::{new_event, order_stream, stream_append, write};
use eventstore::{Client, ReadStreamOptions};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use surge_events::StreamType;
use surge_runtime::auth::new_api_key;
use surge_runtime::{AuthConfig, Role};
use surge_stream::{StreamApi, StreamApiConfig};
use surge_testkit::TestEnv;

#[tokio::test]
async fn with_a_certificate_clients_read_over_tls_only() {
    let dir = std::env::temp_dir().join(format!("surge-stream-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let (ca_file, cert_file, key_file) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, server.pem()).unwrap();
    std::fs::write(&key_file, server_key.serialize_pem()).unwrap();

    let env = TestEnv::new().await;
    let order = order_stream(1);
    write(
        &env.pool,
        &[stream_append(
            &order,
            StreamType::Order,
            0,
            vec![new_event("OrderPlaced", 1)],
        )],
    )
    .await;
    let (key, entry) = new_api_key("ana", Role::Analyst);
    let mut config = StreamApiConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        env.db.clone(),
        AuthConfig {
            api_keys: vec![entry],
            ..AuthConfig::default()
        },
    );
    config.tls_cert_file = Some(cert_file);
    config.tls_key_file = Some(key_file);
    let api = StreamApi::build(config).await.expect("the stream API starts with TLS");
    let addr = api.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api.run(async {
        let _ = stopped.await;
    }));

    let secure = format!("esdb://ana:{key}@{addr}?tls=true&tlsCAFile={}", ca_file.display());
    let client = Client::new(secure.parse().unwrap()).unwrap();
    let mut read = client
        .read_stream(order.as_str(), &ReadStreamOptions::default())
        .await
        .unwrap();
    let first = read.next().await.unwrap().expect("the event, over TLS");
    assert_eq!(first.get_original_event().event_type, "OrderPlaced");

    let clear = format!("esdb://ana:{key}@{addr}?tls=false&gossipTimeout=2000");
    let client = Client::new(clear.parse().unwrap()).unwrap();
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        client.read_stream(order.as_str(), &ReadStreamOptions::default()),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "clear text gets nothing from a TLS server"
    );
    let _ = stop.send(());
    let _ = std::fs::remove_dir_all(&dir);
}
