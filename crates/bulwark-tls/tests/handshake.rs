//! Real handshakes on loopback: the local CA's certificates, mutual TLS, a wrong CA,
//! plaintext to a TLS port, and a reload that fails keeping the old certificate.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use bulwark_tls::ca::LocalCa;
use bulwark_tls::{ServerTls, TlsFiles, client_config, server_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts one connection, echoes one line, and reports whether the handshake worked.
async fn server(tls: ServerTls) -> (u16, tokio::task::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        match tls.accept(stream).await {
            Ok(mut s) => {
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                    let _ = s.shutdown().await;
                }
                true
            }
            Err(_) => false,
        }
    });
    (port, task)
}

async fn client(port: u16, config: Arc<rustls::ClientConfig>) -> std::io::Result<Vec<u8>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut s = connector
        .connect(server_name("127.0.0.1").unwrap(), stream)
        .await?;
    s.write_all(b"hello").await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn the_local_ca_serves_mutual_tls_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open_or_create(&dir.path().join("tls")).unwrap();
    let node = ca.issue("db_g1", &["db_g1"]).unwrap();
    let gateway = ca.issue("app_cp", &[]).unwrap();
    // Reopening keeps the CA: certificates issued later chain to the same ca.pem.
    let ca_pem = std::fs::read(ca.ca_file()).unwrap();
    let reopened = LocalCa::open_or_create(&dir.path().join("tls")).unwrap();
    assert_eq!(std::fs::read(reopened.ca_file()).unwrap(), ca_pem);
    let late = reopened.issue("late", &[]).unwrap();

    let files = TlsFiles {
        cert: node.cert.clone(),
        key: node.key.clone(),
        client_ca: Some(ca.ca_file()),
    };
    let tls = ServerTls::load(&files, &[]).unwrap();
    assert!(tls.requires_client_certs());

    // With a client certificate from the same CA (issued after reopening, too).
    for id in [&gateway, &late] {
        let (port, task) = server(tls.clone()).await;
        let config = client_config(&ca.ca_file(), Some((&id.cert, &id.key))).unwrap();
        assert_eq!(client(port, config).await.unwrap(), b"hello");
        assert!(task.await.unwrap());
    }
    // Without one: refused.
    let (port, task) = server(tls.clone()).await;
    let config = client_config(&ca.ca_file(), None).unwrap();
    assert!(client(port, config).await.is_err());
    assert!(!task.await.unwrap());
    // A client trusting another CA refuses the server.
    let other = LocalCa::open_or_create(&dir.path().join("other")).unwrap();
    let (port, task) = server(tls.clone()).await;
    let config = client_config(&other.ca_file(), Some((&gateway.cert, &gateway.key))).unwrap();
    assert!(client(port, config).await.is_err());
    assert!(!task.await.unwrap());
    // Plaintext to the TLS port: the handshake fails, nothing is served.
    let (port, task) = server(tls.clone()).await;
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(!task.await.unwrap());
    // Key files are private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&node.key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_broken_certificate_at_reload_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::open_or_create(dir.path()).unwrap();
    let id = ca.issue("svc", &[]).unwrap();
    let files = TlsFiles {
        cert: id.cert.clone(),
        key: id.key.clone(),
        client_ca: None,
    };
    let tls = ServerTls::load(&files, &[]).unwrap();
    std::fs::write(&id.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tls.reload(true);
    let (port, task) = server(tls.clone()).await;
    let config = client_config(&ca.ca_file(), None).unwrap();
    assert_eq!(
        client(port, config).await.unwrap(),
        b"hello",
        "old certificate kept"
    );
    assert!(task.await.unwrap());
    // At start-up the same file is an error naming it.
    let e = ServerTls::load(&files, &[]).unwrap_err().to_string();
    assert!(e.contains("svc.pem"), "{e}");
    // A renewed certificate is picked up without a restart.
    ca.issue("svc", &[]).unwrap();
    tls.reload(false);
    let (port, task) = server(tls.clone()).await;
    let config = client_config(&ca.ca_file(), None).unwrap();
    assert_eq!(client(port, config).await.unwrap(), b"hello");
    assert!(task.await.unwrap());
}
